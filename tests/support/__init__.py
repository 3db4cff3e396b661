"""Test support: code that only the tests run, kept out of the shipped packages.

What lives here builds inputs for tests: :mod:`tests.support.single_file` writes a
diffusers pipeline as one original-layout checkpoint so that the single-file loading
path can be tested offline; :mod:`tests.support.tiny_clip` writes a tiny random CLIP
for the evaluation tests; :mod:`tests.support.telegram` gives the bot settings for
the real Telegram adapter against the loopback fake.  It may import ``engine`` and
``bot``; nothing in ``bot/``, ``engine/`` or ``mmpp/`` may import it
(``tests/test_import_rules.py`` checks that), and ``pyproject.toml`` does not ship
it.  The test doubles of the chat platforms are in ``tests/fakes/``.
"""
