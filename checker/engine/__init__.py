"""The engine: ops to a trace of steps (`trace`), crash states under a persistence model
(`persistence`), their enumeration (`explorer`), the invariants (`invariants`, `views`),
budgets (`budget`) and verdicts (`check`)."""
