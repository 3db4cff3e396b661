"""Evaluation: parameter sweeps scored by identity, prompt alignment, distribution and speed; the bot's ratings.

``mmpp eval`` is the entry point (:mod:`engine.evaluate.cli`).  Every metric
whose model is missing says so in words ("not available: ...") instead of
producing a number, and everything made with the tiny test-sized model is
labelled as meaningless, so no report can pass noise off as a measurement.
"""
