"""Benchmarks (``mmpp bench engine``, ``mmpp bench bots``): measuring tools, not part of the product.

They live outside ``bot/`` and ``engine/`` because they drive test doubles
(the loopback platform fakes in ``tests/fakes/``) and full-size random
weights that no deployment needs; the installed packages stay free of them.
"""
