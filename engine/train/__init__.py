"""LoRA training for the engine's portrait and style adapters (``mmpp train``).

The package is split so that the cheap parts stay cheap: :mod:`engine.train.data`
reads and checks a data folder without torch or diffusers, so a bad folder is
refused in a second rather than after loading gigabytes of weights;
:mod:`engine.train.trainer` runs the accelerate/peft loop; :mod:`engine.train.export`
writes the LoRA in the exact file format ``load_lora_weights`` reads, plus our
metadata.  ``python -m engine.train`` exists for ``accelerate launch -m``.

Nothing is imported here on purpose: ``import engine.train`` must not pull in torch.
"""

from __future__ import annotations
