"""Fault injection (project issue #4): real SIGKILLs, real Redis restarts, real platform errors."""
