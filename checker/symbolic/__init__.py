"""The symbolic engine: z3 decides crash states without enumerating them (`encoding`),
and finds the fewest fsyncs that remove every violation (`repair`)."""
