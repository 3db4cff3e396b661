"""Write a diffusers pipeline as one original-layout (CompVis/LDM) checkpoint.

Why this exists: the engine loads the base model from a Hub id, a diffusers
folder *or* a single ``.safetensors`` file in the layout of the original
Stable Diffusion code (the one A1111, ComfyUI and most model sites use).
That last path goes through diffusers' ``from_single_file`` and its key
conversion, which no test could reach without downloading a multi-gigabyte
checkpoint.  Writing the tiny weights' random components in that layout lets
the tests load them back through exactly the production code.  It is test
support (``tests/support/``): no product code calls it, so it is not shipped.

The mapping here is the inverse of diffusers' ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` and
``convert_open_clip_checkpoint`` (``diffusers/loaders/single_file_utils.py``),
derived from the model configs rather than from fixed SD 1.5 numbers:

* UNet, under ``model.diffusion_model.``: the diffusers blocks are numbered
  per resolution level, the original ones as one flat list.  Each down level
  has ``layers_per_block`` (resnet, attention) pairs and, except the last, a
  downsampler, so ``down_blocks.b.resnets.j`` is ``input_blocks.{1 + b(L+1) + j}.0``
  (index 0 is ``conv_in``); each up level has ``L + 1`` pairs, and its
  upsampler sits after the attention of its last pair (``.2``) or straight
  after the resnet when the level has no attention (``.1``).  The middle block
  is resnet, attention, resnet (``middle_block.0/1/2``).
* VAE, under ``first_stage_model.``: the decoder's up levels are numbered in
  the opposite order, the mid-block resnets are ``block_1``/``block_2``, and the
  mid-block attention is ``norm/q/k/v/proj_out`` with 1x1 convolution weights
  (``[out, in, 1, 1]``) where diffusers has linear ones.
* CLIP ViT-L text encoder (SD 1.5 ``cond_stage_model.transformer.``, SDXL
  ``conditioner.embedders.0.transformer.``): the Hugging Face module names,
  under ``text_model.`` (recent transformers flatten ``CLIPTextModel`` and drop
  that prefix from its state dict; the file keeps it).
* SDXL's OpenCLIP bigG encoder (``conditioner.embedders.1.model.``): the
  open_clip names, with q/k/v fused into one ``in_proj`` and the text
  projection stored as a transposed plain matrix.

Only the weights go into the file: the tokenizers and the scheduler are not
part of the original format, so loading needs a ``config`` (a diffusers folder
or Hub id of the same architecture), as :func:`engine.pipeline.load_base_pipeline`
passes from ``ModelSources.base_config``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_TOP_LEVEL = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_norm_out": "encoder.norm_out",
    "encoder.conv_out": "encoder.conv_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_norm_out": "decoder.norm_out",
    "decoder.conv_out": "decoder.conv_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
_VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER_NAMES = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def save_as_single_file(pipeline: Any, path: Path, *, dtype: torch.dtype | None = None) -> None:
    """Write ``pipeline``'s UNet, VAE and text encoder(s) to ``path`` in the original layout.

    ``pipeline`` is a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``
    without LoRA or IP-Adapter layers (fuse and unload those first).
    ``dtype`` converts floating-point weights on the way out, e.g.
    ``torch.float16`` for a half-size export.
    """
    from safetensors.torch import save_file

    state = to_original_state_dict(pipeline)
    if dtype is not None:
        state = {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})


def to_original_state_dict(pipeline: Any) -> dict[str, torch.Tensor]:
    """The pipeline's weights as one flat dict with the original checkpoint's key names."""
    is_xl = getattr(pipeline, "text_encoder_2", None) is not None
    for name in ("unet", "vae", "text_encoder"):
        if getattr(pipeline, name, None) is None:
            raise ValueError(f"the pipeline has no {name}; a single-file checkpoint needs the UNet, VAE and CLIP")
    state: dict[str, torch.Tensor] = {}
    _merge(state, UNET_PREFIX, unet_to_original(_plain_state(pipeline.unet, "unet"), dict(pipeline.unet.config)))
    _merge(state, VAE_PREFIX, vae_to_original(_plain_state(pipeline.vae, "vae"), dict(pipeline.vae.config)))
    clip_prefix = SDXL_CLIP_PREFIX if is_xl else SD15_CLIP_PREFIX
    _merge(state, clip_prefix, clip_to_original(_plain_state(pipeline.text_encoder, "text_encoder")))
    if is_xl:
        _warn_if_encoders_look_alike(pipeline)
        _merge(
            state,
            SDXL_OPEN_CLIP_PREFIX,
            open_clip_to_original(_plain_state(pipeline.text_encoder_2, "text_encoder_2")),
        )
    return state


# --------------------------------------------------------------------------- UNet


def unet_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict with LDM ``openaimodel.UNetModel`` names."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("only UNets with one layers_per_block for every level have an original layout")
    levels = len(config["block_out_channels"])
    up_types = list(config["up_block_types"])
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise ValueError("UNets with class embeddings are not supported")

    def rename(key: str) -> str | None:
        module, _, leaf = key.rpartition(".")
        if module in _UNET_TOP_LEVEL:
            return f"{_UNET_TOP_LEVEL[module]}.{leaf}"
        if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
            if level >= levels or layer >= layers:
                return None
            index = 1 + level * (layers + 1) + layer
            return f"input_blocks.{index}.{_unet_part(kind, rest)}"
        if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            level = int(match[1])
            if level >= levels - 1:
                return None
            return f"input_blocks.{1 + level * (layers + 1) + layers}.0.op.{match[2]}"
        if match := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", key):
            # The middle block is flat: resnet, transformer, resnet, with no slot index inside.
            return f"middle_block.{2 * int(match[1])}.{_unet_resnet_part(match[2])}"
        if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            return f"middle_block.1.{match[1]}"
        if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
            if level >= levels or layer > layers:
                return None
            return f"output_blocks.{level * (layers + 1) + layer}.{_unet_part(kind, rest)}"
        if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            level = int(match[1])
            if level >= levels - 1:
                return None
            slot = 2 if "CrossAttn" in up_types[level] else 1
            return f"output_blocks.{level * (layers + 1) + layers}.{slot}.conv.{match[2]}"
        return None

    return _rename_all(state, rename, "UNet")


def _unet_part(kind: str, rest: str) -> str:
    """The ``.0`` (resnet) or ``.1`` (spatial transformer) module inside one flat block."""
    return f"1.{rest}" if kind == "attentions" else f"0.{_unet_resnet_part(rest)}"


def _unet_resnet_part(rest: str) -> str:
    module, _, leaf = rest.partition(".")
    return f"{_UNET_RESNET_NAMES.get(module, module)}.{leaf}"


# --------------------------------------------------------------------------- VAE


def vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict with LDM ``AutoencoderKL`` names and shapes."""
    levels = len(config["down_block_types"])
    if len(config["up_block_types"]) != levels:
        raise ValueError("the VAE's encoder and decoder have different depths")

    def rename(key: str) -> str | None:
        module, _, leaf = key.rpartition(".")
        if module in _VAE_TOP_LEVEL:
            return f"{_VAE_TOP_LEVEL[module]}.{leaf}"
        if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"encoder.down.{match[1]}.block.{match[2]}.{_vae_resnet_part(match[3])}"
        if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
        if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            level = levels - 1 - int(match[1])
            return f"decoder.up.{level}.block.{match[2]}.{_vae_resnet_part(match[3])}" if level >= 0 else None
        if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            level = levels - 1 - int(match[1])
            return f"decoder.up.{level}.upsample.conv.{match[2]}" if level >= 0 else None
        if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", key):
            return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_vae_resnet_part(match[3])}"
        if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            if match[2] not in _VAE_ATTENTION_NAMES:
                return None
            return f"{match[1]}.mid.attn_1.{_VAE_ATTENTION_NAMES[match[2]]}.{match[3]}"
        return None

    def reshape(key: str, value: torch.Tensor) -> torch.Tensor:
        # LDM's mid-block attention projects with 1x1 convolutions.
        if ".mid.attn_1." in key and key.endswith((".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")):
            return value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value
        return value

    return _rename_all(state, rename, "VAE", reshape)


def _vae_resnet_part(rest: str) -> str:
    return rest.replace("conv_shortcut.", "nin_shortcut.", 1) if rest.startswith("conv_shortcut.") else rest


# --------------------------------------------------------------------------- text encoders


def clip_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel`` state dict as the original checkpoints hold it (``text_model.`` names)."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("text_projection."):
            raise ValueError("the first text encoder has a text projection; it is not the CLIP ViT-L layout")
        converted[key if key.startswith("text_model.") else f"text_model.{key}"] = value
    return converted


def open_clip_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict in open_clip's layout (SDXL's second encoder)."""
    inner = {key.removeprefix("text_model."): value for key, value in state.items()}
    converted: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}

    def rename(key: str) -> str | None:
        fixed = {
            "embeddings.token_embedding.weight": "token_embedding.weight",
            "embeddings.position_embedding.weight": "positional_embedding",
            "final_layer_norm.weight": "ln_final.weight",
            "final_layer_norm.bias": "ln_final.bias",
        }
        if key in fixed:
            return fixed[key]
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if match is None or match[2] not in _OPEN_CLIP_LAYER_NAMES:
            return None
        return f"transformer.resblocks.{match[1]}.{_OPEN_CLIP_LAYER_NAMES[match[2]]}.{match[3]}"

    unknown = []
    for key, value in inner.items():
        if key == "text_projection.weight":
            converted["text_projection"] = value.t().contiguous()
        elif match := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault(f"transformer.resblocks.{match[1]}.attn.in_proj_{match[3]}", {})[match[2]] = value
        elif (name := rename(key)) is not None:
            converted[name] = value
        else:
            unknown.append(key)
    if "text_projection" not in converted:
        unknown.append("(missing) text_projection.weight")
    for name, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            unknown.append(f"(incomplete q/k/v) {name}")
            continue
        converted[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    _raise_for_unknown(unknown, "second text encoder")
    return converted


# --------------------------------------------------------------------------- helpers


def _warn_if_encoders_look_alike(pipeline: Any) -> None:
    """diffusers tells SDXL's two encoders apart by width (768 and 1280 in the real model).

    With equal widths ``from_single_file`` loads the CLIP-L weights into both
    encoders and leaves the projection unloaded; the file itself is still right.
    """
    first = pipeline.text_encoder.config.hidden_size
    if first == pipeline.text_encoder_2.config.hidden_size:
        warnings.warn(
            f"both SDXL text encoders have the same width ({first}); diffusers' from_single_file tells them apart "
            "by width and will load this file's second encoder wrongly",
            stacklevel=3,
        )


def _plain_state(model: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    adapted = [key for key in state if "lora_" in key or ".base_layer." in key]
    if adapted:
        raise ValueError(
            f"the {name} carries LoRA layers ({adapted[0]}, ...); fuse_lora() and unload_lora_weights() first"
        )
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def _rename_all(
    state: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None],
    what: str,
    reshape: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        name = rename(key)
        if name is None:
            unknown.append(key)
            continue
        if name in converted:
            raise ValueError(f"{what}: two weights map to {name}")
        converted[name] = reshape(name, value).contiguous() if reshape else value
    _raise_for_unknown(unknown, what)
    return converted


def _raise_for_unknown(keys: Iterable[str], what: str) -> None:
    keys = list(keys)
    if keys:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise ValueError(f"{what}: no original-layout name for {shown}")


def _merge(state: dict[str, torch.Tensor], prefix: str, part: Mapping[str, torch.Tensor]) -> None:
    for key, value in part.items():
        state[prefix + key] = value
