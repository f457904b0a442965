"""Use cases, one module each (DESIGN §2): handlers call one function here; I/O only through dal/, providers/, notifications/."""
