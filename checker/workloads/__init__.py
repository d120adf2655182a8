"""Workload generation: every small workload over a fixed name space, or random samples
shrunk with hypothesis (`explore`)."""
