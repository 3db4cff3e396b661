"""Writing the trained LoRA in the file format the engine (and every diffusers user) loads.

The file is what ``StableDiffusionPipeline.save_lora_weights`` /
``StableDiffusionXLPipeline.save_lora_weights`` write, the way diffusers' own training
scripts call them: peft state dicts converted to diffusers names, the peft
``LoraConfig`` of each part as ``lora_adapter_metadata`` (so a loader restores the
right rank and alpha), and ``format: pt``.  ``save_lora_weights`` has no way to add
other header entries, so the file it writes is read back and written again with the
same tensors and header plus our ``mmpp.*`` entries: which base, kind, data and
settings produced it.  ``load_lora_weights`` only reads its own key and ignores ours.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

METADATA_PREFIX = "mmpp."
#: The file name diffusers uses when none is given; only ever inside a temporary folder.
_SCRATCH_NAME = "pytorch_lora_weights.safetensors"


def mmpp_version() -> str:
    try:
        return package_metadata.version("mmpp")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def lora_state(model: Any) -> dict[str, Any]:
    """The adapter's tensors under diffusers' names, as the training scripts save them."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def adapter_config(model: Any) -> dict[str, Any]:
    """The peft ``LoraConfig`` as a JSON-able dict (diffusers' ``_collate_lora_metadata``).

    ``target_modules`` is narrowed from suffixes (``to_q``) to the full names of the
    layers that were trained.  A loader builds its ``LoraConfig`` from this entry, and with
    bare suffixes it would also wrap same-named layers the training model did not have,
    such as an IP-Adapter's image projection in the engine's UNet (peft then warns and
    adds empty adapters there); full names match exactly what the tensors cover.
    """
    from peft.utils import get_peft_model_state_dict

    config = model.peft_config["default"].to_dict()
    names = {key.rsplit(".lora_", 1)[0] for key in get_peft_model_state_dict(model)}
    config["target_modules"] = sorted(names)
    return json.loads(json.dumps(config, default=lambda value: sorted(value) if isinstance(value, set) else str(value)))


def save_lora(
    path: Path,
    pipeline_class: Any,
    unet: Any,
    text_encoders: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write the LoRA of ``unet`` (and of trained text encoders) to ``path``, atomically.

    ``text_encoders`` maps ``"text_encoder"`` / ``"text_encoder_2"`` to the models
    whose adapters were trained; ``info`` becomes ``mmpp.<key>`` header entries.
    """
    arguments: dict[str, Any] = {
        "unet_lora_layers": lora_state(unet),
        "unet_lora_adapter_metadata": adapter_config(unet),
    }
    for name, model in (text_encoders or {}).items():
        arguments[f"{name}_lora_layers"] = lora_state(model)
        arguments[f"{name}_lora_adapter_metadata"] = adapter_config(model)
    return _save_with_header(path, pipeline_class, arguments, info)


def save_transformer_lora(
    path: Path, pipeline_class: Any, transformer: Any, info: dict[str, Any] | None = None
) -> Path:
    """Write the LoRA of a FLUX.2 [klein] transformer to ``path``, atomically, as ``Flux2LoraLoaderMixin`` saves it.

    The tensors keep peft's names (``transformer.<module>.lora_A.weight``), as diffusers' FLUX.2 LoRA
    scripts save them and as ``Flux2KleinPipeline.load_lora_weights`` reads them; the adapter's
    ``LoraConfig`` goes in as ``transformer`` metadata, so the loader restores its rank and alpha.
    """
    from peft.utils import get_peft_model_state_dict

    state = {
        key: value.detach().to("cpu").contiguous() for key, value in get_peft_model_state_dict(transformer).items()
    }
    arguments = {"transformer_lora_layers": state, "transformer_lora_adapter_metadata": adapter_config(transformer)}
    return _save_with_header(path, pipeline_class, arguments, info)


def _save_with_header(path: Path, pipeline_class: Any, arguments: dict[str, Any], info: dict[str, Any] | None) -> Path:
    """``pipeline_class.save_lora_weights(**arguments)`` into a scratch folder, then the same tensors and header
    plus the ``mmpp.*`` entries written to ``path`` in one rename."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=path.parent) as scratch:
        pipeline_class.save_lora_weights(scratch, weight_name=_SCRATCH_NAME, safe_serialization=True, **arguments)
        written = Path(scratch) / _SCRATCH_NAME
        with safe_open(str(written), framework="pt") as handle:
            header = dict(handle.metadata() or {})
        tensors = load_file(str(written))
        header.update({f"{METADATA_PREFIX}{key}": _text(value) for key, value in (info or {}).items()})
        final = Path(scratch) / "final.safetensors"
        save_file(tensors, str(final), metadata=header)
        os.replace(final, path)
    return path


def read_lora_metadata(path: Path) -> dict[str, str]:
    """The ``mmpp.*`` header entries of a LoRA file, without the prefix."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    return {key[len(METADATA_PREFIX) :]: value for key, value in header.items() if key.startswith(METADATA_PREFIX)}


def _text(value: Any) -> str:
    """Header values must be strings; lists and dicts become JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    return json.dumps(value, sort_keys=True)
