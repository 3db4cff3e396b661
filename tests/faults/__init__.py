"""Fault injection: real SIGKILLs, real Redis restarts, real platform errors."""
