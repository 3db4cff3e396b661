"""Where weights come from: real sources, and the tiny test-sized weights.

Real weights come as a Hugging Face Hub id, a local diffusers folder or a
single-file ``.safetensors`` checkpoint.  This machine (and CI) cannot download
them, so the *tiny* weights are small random components with the real
architectures, written in the real on-disk formats and handed back as
sources that go through exactly the same loading code.  Their pictures are
noise; everything that shows them says so.  The writers of those random
files (LoRAs, IP-Adapter, image encoder) also write the full-size random
weights of the engine benchmark (``bench/engine.py``), at other sizes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from mmpp.errors import ErrorCode, MmppError

logger = logging.getLogger(__name__)

Family = Literal["sd15", "sdxl", "flux2-klein"]
#: The instruction-editing family: FLUX.2 [klein] (its engine is ``engine/klein.py``).
KLEIN: Family = "flux2-klein"
#: The pipeline class FLUX.2 [klein]'s ``model_index.json`` names.
KLEIN_PIPELINE_CLASS = "Flux2KleinPipeline"
#: The Hub id of the real 4-step distilled 4B model (Apache-2.0), the default of ``MMPP_BASE_MODEL`` for klein.
KLEIN_4B_HUB_ID = "black-forest-labs/FLUX.2-klein-4B"

#: Bump when the tiny builder changes, so stale caches are rebuilt, not reused.
TINY_FORMAT_VERSION = 6
TINY_SEED = 20261125
TINY_IP_ADAPTER_FILE = "ip-adapter-plus-face_tiny.safetensors"
#: What every LoRA written here adapts (the LCM LoRA may adapt more).
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class WeightSource:
    """A weight file or folder, local or on the Hub.

    ``location`` is a Hub repository id or a local folder; ``weight_name`` is
    the file inside it (with any sub-folder), or ``None`` for whole folders.
    """

    location: str
    weight_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> WeightSource:
        """Read ``repo:path/in/repo.safetensors``, a local file, or a folder."""
        text = text.strip()
        if not text:
            raise ValueError("empty weight source")
        path = Path(text).expanduser()
        if path.suffix in {".safetensors", ".ckpt", ".bin"} and (path.exists() or (os.sep in text and ":" not in text)):
            return cls(location=str(path.parent), weight_name=path.name)
        if path.exists():
            return cls(location=str(path))
        if ":" in text:
            location, weight_name = text.split(":", 1)
            return cls(location=location, weight_name=weight_name or None)
        return cls(location=text)

    @property
    def is_local(self) -> bool:
        return Path(self.location).expanduser().exists()

    def split_subfolder(self) -> tuple[str, str]:
        """``(subfolder, file name)`` as diffusers' loaders take them."""
        if not self.weight_name:
            return "", ""
        subfolder, _, name = self.weight_name.rpartition("/")
        return subfolder, name

    def describe(self) -> str:
        return f"{self.location}/{self.weight_name}" if self.weight_name else self.location


@dataclass(frozen=True)
class IPAdapterSource:
    weights: WeightSource
    image_encoder_folder: str


@dataclass
class ModelSources:
    """Everything the pipeline loads, resolved for one choice of weights."""

    base: str
    family: Family | None = None
    base_config: str = ""
    portrait_lora: WeightSource | None = None
    lcm_lora: WeightSource | None = None
    ip_adapter: IPAdapterSource | None = None
    #: Per-style LoRA sources that replace the catalogue's (the tiny weights
    #: substitutes its own random LoRAs for the real ones).
    style_loras: dict[str, WeightSource] = field(default_factory=dict)
    #: AutoencoderTiny (TAESD) folder or Hub id: fast-mode decoding and previews; optional.
    tiny_decoder: WeightSource | None = None
    test_sized: bool = False
    label: str = ""


# --------------------------------------------------------------------------- family detection


def detect_family(base: str, *, local_files_only: bool = False) -> Family:
    """Tell SD 1.5, SDXL and FLUX.2 [klein] apart by looking at the weights, not the name.

    A wrong guess would load the wrong pipeline class and fail deep inside
    diffusers, so the family is read from ``model_index.json`` for folders
    and Hub ids and from tensor names for single files.
    """
    path = Path(base).expanduser()
    if path.is_file():
        return _family_of_single_file(path)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.exists():
            raise MmppError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"The folder {path} has no model_index.json, so it is not a diffusers model folder.",
            )
        return _family_of_index(json.loads(index.read_text()))
    if base.endswith((".safetensors", ".ckpt")):
        raise MmppError(ErrorCode.MODEL_UNAVAILABLE, f"The checkpoint file {base} does not exist.")
    try:
        from huggingface_hub import hf_hub_download

        index_path = hf_hub_download(base, "model_index.json", local_files_only=local_files_only)
    except Exception as error:  # noqa: BLE001 - the hub raises many types for "not reachable"
        raise model_unavailable(base, error) from None
    return _family_of_index(json.loads(Path(index_path).read_text()))


def _family_of_index(index: dict[str, object]) -> Family:
    class_name = str(index.get("_class_name", ""))
    if class_name == KLEIN_PIPELINE_CLASS:
        return KLEIN
    if class_name.startswith("Flux"):
        # FLUX.1 and FLUX.2 [dev] are other pipelines (and non-commercial): refused, not run as SD.
        raise MmppError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"The model is a {class_name}; of the FLUX models only FLUX.2 [klein] ({KLEIN_PIPELINE_CLASS}) is served.",
        )
    if "XL" in class_name or "text_encoder_2" in index:
        return "sdxl"
    return "sd15"


def _family_of_single_file(path: Path) -> Family:
    if path.suffix != ".safetensors":
        raise MmppError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"{path.name}: only .safetensors single-file checkpoints are loaded (pickled .ckpt files can run code).",
        )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    if any(key.startswith("conditioner.embedders.1.") for key in keys):
        return "sdxl"
    if any(key.startswith("model.diffusion_model.") for key in keys):
        return "sd15"
    raise MmppError(
        ErrorCode.MODEL_UNAVAILABLE, f"{path.name} is not a Stable Diffusion checkpoint (no UNet tensors found)."
    )


def model_unavailable(what: str, error: BaseException | None = None) -> MmppError:
    """The one message for weights that cannot be had, with the ways out."""
    reason = f" ({type(error).__name__})" if error is not None else ""
    return MmppError(
        ErrorCode.MODEL_UNAVAILABLE,
        f"The model '{what}' is not on this machine and cannot be downloaded{reason}; download it on a connected "
        f"machine (hf download {what}) into the Hugging Face cache, or point MMPP_BASE_MODEL at a local "
        "diffusers folder or .safetensors file, or use the tiny test-sized weights (--weights tiny).",
    )


# --------------------------------------------------------------------------- choosing the weights


def resolve_sources(weights: str, settings: object, style_names: list[str]) -> ModelSources:
    """Turn a weights choice (``default``, ``tiny``, ``tiny-sdxl``, ``tiny-klein``) and the settings into sources.

    ``auto`` is resolved by the caller (it needs a load attempt to decide);
    here it behaves like ``default``.
    """
    from engine.settings import EngineSettings

    assert isinstance(settings, EngineSettings)
    if weights == "tiny-klein":
        return build_tiny_klein_weights(settings.cache_dir / "tiny", style_names)
    if weights in {"tiny", "tiny-sdxl"}:
        family: Family = "sdxl" if weights == "tiny-sdxl" else "sd15"
        return build_tiny_weights(settings.cache_dir / "tiny", family, style_names)
    family = detect_family(settings.base_model)
    if family == KLEIN:
        # Its own prompt handling and identity path: no LCM, IP-Adapter, portrait LoRA or TAESD to resolve.
        return ModelSources(base=settings.base_model, family=family, label=settings.base_model)
    lcm = settings.lcm_lora_sdxl if family == "sdxl" else settings.lcm_lora_sd15
    ip_adapter = settings.ip_adapter_sdxl if family == "sdxl" else settings.ip_adapter_sd15
    tiny_decoder = settings.tiny_decoder_sdxl if family == "sdxl" else settings.tiny_decoder_sd15
    return ModelSources(
        base=settings.base_model,
        family=family,
        base_config=settings.base_model_config,
        portrait_lora=WeightSource.parse(settings.portrait_lora) if settings.portrait_lora else None,
        lcm_lora=WeightSource.parse(lcm) if lcm else None,
        ip_adapter=(
            IPAdapterSource(WeightSource.parse(ip_adapter), settings.ip_adapter_image_encoder) if ip_adapter else None
        ),
        tiny_decoder=WeightSource.parse(tiny_decoder) if tiny_decoder else None,
        label=settings.base_model,
    )


# --------------------------------------------------------------------------- the tiny weights


def build_tiny_weights(cache_root: Path, family: Family, style_names: list[str]) -> ModelSources:
    """Build (once) and return the tiny random model for ``family``.

    Built deterministically from a fixed seed and cached by a content key, so
    every test run and every worker process sees identical weights.
    """
    key = hashlib.sha256(
        json.dumps({"version": TINY_FORMAT_VERSION, "family": family, "styles": sorted(style_names)}).encode()
    ).hexdigest()[:12]
    root = cache_root / f"{family}-{key}"
    marker = root / "complete.json"
    if not marker.exists():
        _build_tiny_into(root, family, sorted(style_names))
    return random_weight_sources(
        root,
        family,
        ip_adapter_file=TINY_IP_ADAPTER_FILE,
        label=f"tiny-{family} (test-sized random weights: its pictures are noise)",
    )


def _build_tiny_into(root: Path, family: Family, style_names: list[str]) -> None:
    import shutil
    import tempfile

    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling and rename, so two processes racing to
    # build the cache never see a half-written folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        with torch.random.fork_rng():
            torch.manual_seed(TINY_SEED)
            pipeline = build_tiny_pipeline(family)
            pipeline.save_pretrained(staging / "base", safe_serialization=True)
            _write_tiny_ip_adapter(staging / "ip_adapter", pipeline.unet)
            write_random_tiny_decoder(staging / "tiny_decoder", blocks=len(pipeline.vae.config.block_out_channels))
            style_files = write_random_loras(
                pipeline, staging / "loras", style_names, portrait_rank=4, lcm_rank=8, style_rank=4
            )
        (staging / "complete.json").write_text(json.dumps({"family": family, "styles": style_files}, indent=2))
        try:
            staging.rename(root)
        except OSError:
            if not (root / "complete.json").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_tiny_ip_adapter(folder: Path, unet: Any) -> None:
    """A tiny IP-Adapter *Plus Face* file and its tiny CLIP image encoder."""
    vision_hidden = 32
    write_random_image_encoder(
        folder / "image_encoder",
        hidden_size=vision_hidden,
        image_size=32,
        patch_size=8,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
    )
    write_random_ip_adapter(
        folder / TINY_IP_ADAPTER_FILE,
        unet,
        image_hidden=vision_hidden,
        hidden=32,
        queries=4,
        heads=1,
        scale=0.1,
        slot_scale=0.3,
    )


def _safe_file_stem(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-") or "style"


def build_tiny_tokenizer_files(folder: Path, corpus: str, vocab_budget: int = 1000) -> None:
    """Write a CLIP BPE vocabulary learnt from ``corpus``.

    CLIP's tokenizer is byte-level BPE: 256 byte symbols, each also with an
    end-of-word ``</w>`` form, then merges.  Learning a few hundred merges on
    our own prompt texts gives realistic word-level tokens for the words the
    styles use, with no download.
    """
    byte_symbols = list(_bytes_to_unicode().values())
    vocab_list = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    words = Counter(re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]", corpus.lower()))
    splits = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges = _learn_merges(words, splits, vocab_list, budget=vocab_budget - len(vocab_list) - 2)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab_list)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")


def _learn_merges(
    words: Counter[str], splits: dict[str, list[str]], vocab_list: list[str], *, budget: int
) -> list[tuple[str, str]]:
    """Greedy BPE: merge the most frequent pair (ties by the pair itself) ``budget`` times at most.

    ``splits`` (each word's symbols) and ``vocab_list`` (every merged symbol appended) are updated in place.
    """
    merges: list[tuple[str, str]] = []
    while len(merges) < budget:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            symbols = splits[word]
            for left, right in itertools.pairwise(symbols):
                pairs[(left, right)] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        merged = best[0] + best[1]
        for word, symbols in splits.items():
            joined: list[str] = []
            position = 0
            while position < len(symbols):
                if position + 1 < len(symbols) and (symbols[position], symbols[position + 1]) == best:
                    joined.append(merged)
                    position += 2
                else:
                    joined.append(symbols[position])
                    position += 1
            splits[word] = joined
        if merged not in vocab_list:
            vocab_list.append(merged)
    return merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters), strict=True))


def _tiny_corpus() -> str:
    """Text the tiny tokenizer learns its merges from: the style catalogue."""
    from mmpp.catalogue import default_catalogue_path

    return default_catalogue_path().read_text(encoding="utf-8") + " a person portrait photo face"


def build_tiny_pipeline(family: Family):  # noqa: ANN201 - diffusers pipelines share no useful base type
    """Small random components with the real SD 1.5 / SDXL architectures.

    The sizes follow diffusers' own pipeline tests: big enough to exercise
    every block type (cross-attention, up/down sampling, SDXL's added time
    embeddings), small enough to run two denoising steps in well under a
    second on a CPU.
    """
    import tempfile

    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        build_tiny_tokenizer_files(Path(scratch), _tiny_corpus())
        tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=77)
    vocab_size = len(tokenizer)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
        norm_num_groups=32,
    )

    def text_config(hidden_size: int, projection_dim: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            hidden_size=hidden_size,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=vocab_size,
            projection_dim=projection_dim,
            hidden_act="gelu",
            max_position_embeddings=77,
        )

    if family == "sd15":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=32,
        )
        return StableDiffusionPipeline(
            unet=unet,
            scheduler=scheduler,
            vae=vae,
            text_encoder=CLIPTextModel(text_config(32, 32)),
            tokenizer=tokenizer,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + 32 pooled text
        cross_attention_dim=96,  # 32 + 64: both text encoders side by side
        norm_num_groups=32,
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(text_config(32, 32)),
        # Wider than the first encoder, as in the real SDXL (768 vs 1280): diffusers'
        # single-file loader tells the two encoders apart by width.
        text_encoder_2=CLIPTextModelWithProjection(text_config(64, 32)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        image_encoder=None,
        feature_extractor=None,
    )


# --------------------------------------------------------------------------- the tiny FLUX.2 [klein]

#: Qwen3's chat template, reduced to what Flux2KleinPipeline uses: one user turn, the assistant's turn
#: opened, and the empty thinking block Qwen3 writes when thinking is switched off (the pipeline asks
#: ``enable_thinking=False``), so the tiny text encoder reads the same token layout as the real one.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
#: The pipeline stacks the text encoder's hidden states of these layers (its default); the tiny Qwen3 has
#: one layer more than the deepest, so the engine passes nothing and real and tiny weights run the same call.
KLEIN_TEXT_ENCODER_LAYERS = (9, 18, 27)
#: Bump when the tiny klein builder changes (its cache key holds it beside TINY_FORMAT_VERSION).
TINY_KLEIN_FORMAT_VERSION = 2
#: The tiny klein's reference and output side: small enough for a CPU, divisible by its latent patch (4 px).
TINY_KLEIN_SIDE = 64


def build_tiny_qwen_tokenizer_files(folder: Path, corpus: str, vocab_budget: int = 700) -> None:
    """Write a Qwen2 byte-level BPE vocabulary (``vocab.json``, ``merges.txt``) learnt from ``corpus``.

    Qwen2's tokenizer is GPT-2's byte-level BPE without end-of-word marks: a
    word carries its leading space as ``Ġ``.  The same greedy merges as the
    CLIP tokenizer above, on the catalogue's own text, give word-level tokens
    for the words the edit instructions use, with no download.
    """
    byte_map = _bytes_to_unicode()
    vocab_list = list(byte_map.values())
    pieces = re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+", corpus)
    words = Counter("".join(byte_map[byte] for byte in piece.encode("utf-8")) for piece in pieces)
    splits = {word: list(word) for word in words}
    merges = _learn_merges(words, splits, vocab_list, budget=vocab_budget - len(vocab_list) - len(QWEN_SPECIAL_TOKENS))
    vocab_list += list(QWEN_SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab_list)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")


def load_tiny_qwen_tokenizer(folder: Path) -> Any:
    """The Qwen2 tokenizer of ``folder``'s vocabulary and merges, with the chat template the pipeline applies."""
    from transformers import Qwen2Tokenizer

    vocab = json.loads((folder / "vocab.json").read_text())
    lines = (folder / "merges.txt").read_text().splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=512,
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def build_tiny_klein_pipeline() -> Any:
    """Small random components with FLUX.2 [klein]'s real architectures.

    The sizes follow diffusers' own klein tests, with two changes: the Qwen3
    text encoder has 28 layers (tiny ones) so the pipeline's default hidden
    layers (9, 18, 27) exist, and the VAE has two blocks so a latent patch
    covers 4 pixels as it covers 16 in the real model.  ``is_distilled`` is
    set as in the 4-step klein 4B, so guidance is off as it is there.
    """
    import tempfile

    from diffusers import (
        AutoencoderKLFlux2,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with tempfile.TemporaryDirectory() as scratch:
        build_tiny_qwen_tokenizer_files(Path(scratch), _tiny_corpus())
        tokenizer = load_tiny_qwen_tokenizer(Path(scratch))
    hidden = 16
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=32,
            num_hidden_layers=max(KLEIN_TEXT_ENCODER_LAYERS) + 1,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    latent_channels = 4
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=TINY_KLEIN_SIDE,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=latent_channels * 4,  # the VAE's latents in 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=hidden * len(KLEIN_TEXT_ENCODER_LAYERS),
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )
    _sharpen_tiny_attention(transformer)
    return assemble_klein_pipeline(transformer, vae, text_encoder, tokenizer)


def assemble_klein_pipeline(transformer: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> Any:
    """The distilled klein pipeline around its parts, with the scheduler FLUX.2 [klein] ships with
    (flow matching, shift 3, dynamic shifting): the tiny profile and the full-size bench shape build the
    same pipeline, so what one proves holds for the other."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )


def _sharpen_tiny_attention(transformer: Any) -> None:
    """Make the tiny transformer listen to its context: peaked attention, stronger values and output.

    At diffusers' initialisation (unit query/key norms, small projections) every
    token attends almost evenly to a thousand others, so the reference image and
    the instruction moved the tiny pictures by a tenth of a grey level while the
    seed moved them by 46: a test that a different selfie or instruction changes
    the picture would pass or fail on rounding.  Query/key norm gains of 4, value
    and attention-output projections times 3 and the final projection times 4
    give the conditioning a clear effect (a few grey levels), still finite.
    """
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if ".norm_q." in name or ".norm_k." in name or ".norm_added_q." in name or ".norm_added_k." in name:
                parameter.fill_(4.0)
            elif name.endswith(("to_v.weight", "add_v_proj.weight", "to_out.0.weight", "to_add_out.weight")):
                parameter.mul_(3.0)
            elif name == "proj_out.weight":
                parameter.mul_(4.0)


def build_tiny_klein_weights(cache_root: Path, style_names: list[str]) -> ModelSources:
    """Build (once) and return the tiny FLUX.2 [klein], cached by a content key like the SD ones."""
    key = hashlib.sha256(
        json.dumps(
            {
                "version": TINY_FORMAT_VERSION,
                "klein_version": TINY_KLEIN_FORMAT_VERSION,
                "family": KLEIN,
                "styles": sorted(style_names),
            }
        ).encode()
    ).hexdigest()[:12]
    root = cache_root / f"{KLEIN}-{key}"
    if not (root / "complete.json").exists():
        _build_tiny_klein_into(root, sorted(style_names))
    return built_klein_sources(root, f"tiny-{KLEIN} (test-sized random weights: its pictures are noise)")


def built_klein_sources(root: Path, label: str) -> ModelSources:
    """The sources of a klein folder this project built (``base/``, ``loras/`` and ``complete.json``).

    The tiny profile and the full-size benchmark shape write the same layout, so both are read back here;
    ``complete.json`` is written last, so its presence means the folder is whole.
    """
    manifest = json.loads((root / "complete.json").read_text())
    loras = str(root / "loras")
    return ModelSources(
        base=str(root / "base"),
        family=KLEIN,
        style_loras={name: WeightSource(loras, file_name) for name, file_name in manifest["styles"].items()},
        test_sized=True,
        label=label,
    )


def _build_tiny_klein_into(root: Path, style_names: list[str]) -> None:
    import shutil
    import tempfile

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        with torch.random.fork_rng():
            torch.manual_seed(TINY_SEED)
            pipeline = build_tiny_klein_pipeline()
            pipeline.save_pretrained(staging / "base", safe_serialization=True)
            style_files: dict[str, str] = {}
            # One random klein style LoRA per style (seeds 100, 101, ... as the SD ones), in place of the
            # catalogue's klein_lora, so a test can tell a LoRA's effect from none.
            for index, name in enumerate(style_names):
                file_name = f"style-{_safe_file_stem(name)}.safetensors"
                write_random_lora(pipeline, staging / "loras", file_name, seed=100 + index, rank=4)
                style_files[name] = file_name
        (staging / "complete.json").write_text(json.dumps({"family": KLEIN, "styles": style_files}, indent=2))
        try:
            staging.rename(root)
        except OSError:
            if not (root / "complete.json").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- random weights, real formats
#
# The writers below serve the tiny weights and the benchmark's full-size SD 1.5
# (``bench/engine.py``) alike: the same files, keys and seeds, at other sizes.


def random_weight_sources(root: Path, family: Family, *, ip_adapter_file: str, label: str) -> ModelSources:
    """The sources of a folder of random weights: ``base/``, ``ip_adapter/``, ``loras/`` and ``complete.json``.

    ``complete.json`` names each style's LoRA file (``{"styles": {name: file}}``),
    as :func:`write_random_loras` returns them.
    """
    manifest = json.loads((root / "complete.json").read_text())
    loras = str(root / "loras")
    return ModelSources(
        base=str(root / "base"),
        family=family,
        portrait_lora=WeightSource(loras, "portrait.safetensors"),
        lcm_lora=WeightSource(loras, "lcm.safetensors"),
        ip_adapter=IPAdapterSource(WeightSource(str(root / "ip_adapter"), ip_adapter_file), "image_encoder"),
        style_loras={name: WeightSource(loras, file_name) for name, file_name in manifest["styles"].items()},
        tiny_decoder=WeightSource(str(root / "tiny_decoder")) if (root / "tiny_decoder").is_dir() else None,
        test_sized=True,
        label=label,
    )


def write_random_tiny_decoder(folder: Path, *, blocks: int, channels: int = 16, layers: int = 1,
                              dtype: torch.dtype | None = None) -> None:  # fmt: skip
    """A random ``AutoencoderTiny`` (TAESD's architecture) in diffusers' folder layout.

    ``blocks`` sets its scale: each block after the first halves (encoder) or
    doubles (decoder) the size, as the model's VAE does, so it reads the same
    latents; TAESD itself is 4 blocks of 64 channels with 1/3/3/3 encoder and 3/3/3/1 decoder layers.
    """
    from diffusers import AutoencoderTiny

    decoder = AutoencoderTiny(
        encoder_block_out_channels=(channels,) * blocks,
        decoder_block_out_channels=(channels,) * blocks,
        num_encoder_blocks=(1,) + (layers,) * (blocks - 1),
        num_decoder_blocks=(layers,) * (blocks - 1) + (1,),
        latent_channels=4,
    )
    if dtype is not None:
        decoder = decoder.to(dtype)
    decoder.save_pretrained(folder, safe_serialization=True)


def write_random_loras(
    pipeline: Any,
    folder: Path,
    style_names: list[str],
    *,
    portrait_rank: int,
    lcm_rank: int,
    style_rank: int,
    lcm_targets: tuple[str, ...] = ATTENTION_TARGETS,
    trained_scale: bool = False,
    dtype: torch.dtype | None = None,
) -> dict[str, str]:
    """``portrait.safetensors``, ``lcm.safetensors`` and one ``style-<name>.safetensors`` per style.

    Seeds 1 and 2, then 100, 101, ... in ``style_names`` order; the LCM LoRA
    adapts ``lcm_targets``, the others the attention projections.  Returns
    each style's file name (what ``complete.json`` records).
    """
    options: dict[str, Any] = {"trained_scale": trained_scale, "dtype": dtype}
    write_random_lora(pipeline, folder, "portrait.safetensors", seed=1, rank=portrait_rank, **options)
    write_random_lora(pipeline, folder, "lcm.safetensors", seed=2, rank=lcm_rank, targets=lcm_targets, **options)
    style_files = {}
    for index, name in enumerate(style_names):
        file_name = f"style-{_safe_file_stem(name)}.safetensors"
        write_random_lora(pipeline, folder, file_name, seed=100 + index, rank=style_rank, **options)
        style_files[name] = file_name
    return style_files


def write_random_lora(
    pipeline: Any,
    folder: Path,
    file_name: str,
    *,
    seed: int,
    rank: int,
    targets: tuple[str, ...] = ATTENTION_TARGETS,
    trained_scale: bool = False,
    dtype: torch.dtype | None = None,
) -> None:
    """A random UNet (SD) or transformer (FLUX.2 [klein]) LoRA in the file format diffusers' training scripts write.

    peft initialises ``lora_B`` to zero (a LoRA that does nothing), so both
    matrices are drawn at random here.  By default both at 0.2: strong, so that
    a test that a LoRA "changes the pixels" could fail (the tiny weights).
    ``trained_scale`` draws them at the scale of trained LoRAs instead (A ~
    1/sqrt(fan-in), B small), so that three active adapters on a full-size UNet
    keep activations in range: overflowing values would make a timing
    meaningless (denormals and NaNs run at other speeds on CPUs).
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    is_unet = getattr(pipeline, "unet", None) is not None
    unet = pipeline.unet if is_unet else pipeline.transformer
    adapter_name = f"build_{seed}"
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets))
    unet.add_adapter(config, adapter_name=adapter_name)
    generator = torch.Generator().manual_seed(seed)
    a_scale, b_scale = (None, 0.02) if trained_scale else (0.2, 0.2)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if f".{adapter_name}." not in name:
                continue
            if ".lora_A." in name:
                values = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(values / parameter[0].numel() ** 0.5 if a_scale is None else values * a_scale)
            elif ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * b_scale)
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    if not is_unet:  # FLUX transformers' LoRAs are saved in peft's names, as diffusers' flux2 scripts do
        state = {key: (value if dtype is None else value.to(dtype)).contiguous() for key, value in state.items()}
        type(pipeline).save_lora_weights(folder, transformer_lora_layers=state, weight_name=file_name)
        unet.delete_adapters(adapter_name)
        return
    if set(targets) <= set(ATTENTION_TARGETS):
        # diffusers' key conversion knows only the attention projections; a
        # file half converted would load only in part, so others stay in
        # peft's own format, which diffusers reads as well.
        state = convert_state_dict_to_diffusers(state)
    state = {key: (value if dtype is None else value.to(dtype)).contiguous() for key, value in state.items()}
    type(pipeline).save_lora_weights(folder, unet_lora_layers=state, weight_name=file_name, safe_serialization=True)
    unet.delete_adapters(adapter_name)


def ip_adapter_attention_slots(unet: Any) -> list[tuple[int, int]]:
    """``(key id, block channels)`` for each cross-attention processor, in the original file's numbering.

    The original IP-Adapter files number their ``to_k_ip``/``to_v_ip`` pairs
    1, 3, 5, ... in ``unet.attn_processors`` order, skipping self-attention;
    diffusers reads them back the same way.
    """
    slots = []
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            block_channels = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            block_channels = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            block_channels = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        slots.append((key_id, block_channels))
        key_id += 2
    return slots


def write_random_image_encoder(folder: Path, *, dtype: torch.dtype | None = None, **config: Any) -> None:
    """A random CLIP vision encoder with projection (``CLIPVisionConfig(**config)``) and its image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    if dtype is not None:
        encoder.to(dtype)
    encoder.save_pretrained(folder, safe_serialization=True)
    size = config["image_size"]
    CLIPImageProcessor(size=size, crop_size=size).save_pretrained(folder)


def write_random_ip_adapter(
    path: Path,
    unet: Any,
    *,
    image_hidden: int,
    hidden: int,
    queries: int,
    heads: int,
    layers: int = 4,
    ffn_ratio: int = 4,
    scale: float | None = None,
    slot_scale: float | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """A random IP-Adapter *Plus Face* file in its original layout, which diffusers converts on load.

    ``image_proj.*`` is the Resampler: it reads the image encoder's
    penultimate hidden states (``image_hidden`` wide) with ``queries`` queries
    of width ``hidden`` and ``heads`` heads of 64, in ``layers`` layers, and
    projects to the UNet's cross-attention width; then ``to_k_ip``/``to_v_ip``
    per cross-attention processor (``ip_adapter.N.*``).  The real
    ``ip-adapter-plus-face_sd15.safetensors`` is image_hidden 1280 (ViT-H),
    hidden 768, 16 queries, 12 heads.  Weights are drawn with the global torch
    generator, times ``scale`` (Resampler) and ``slot_scale`` (the per-processor
    keys and values), or divided by sqrt(fan-in) where those are ``None``.
    """
    from safetensors.torch import save_file

    cross_attention_dim = unet.config.cross_attention_dim
    inner = heads * 64  # diffusers derives heads as to_q rows // 64

    def draw(*shape: int, times: float | None = scale) -> torch.Tensor:
        values = torch.randn(*shape)
        return values / shape[-1] ** 0.5 if times is None else values * times

    tensors: dict[str, torch.Tensor] = {
        "image_proj.latents": torch.randn(1, queries, hidden) / hidden**0.5,
        "image_proj.proj_in.weight": draw(hidden, image_hidden),
        "image_proj.proj_in.bias": torch.zeros(hidden),
        "image_proj.proj_out.weight": draw(cross_attention_dim, hidden),
        "image_proj.proj_out.bias": torch.zeros(cross_attention_dim),
        "image_proj.norm_out.weight": torch.ones(cross_attention_dim),
        "image_proj.norm_out.bias": torch.zeros(cross_attention_dim),
    }
    for layer in range(layers):
        prefix = f"image_proj.layers.{layer}"
        tensors.update(
            {
                f"{prefix}.0.norm1.weight": torch.ones(hidden),
                f"{prefix}.0.norm1.bias": torch.zeros(hidden),
                f"{prefix}.0.norm2.weight": torch.ones(hidden),
                f"{prefix}.0.norm2.bias": torch.zeros(hidden),
                f"{prefix}.0.to_q.weight": draw(inner, hidden),
                f"{prefix}.0.to_kv.weight": draw(2 * inner, hidden),
                f"{prefix}.0.to_out.weight": draw(hidden, inner),
                f"{prefix}.1.0.weight": torch.ones(hidden),
                f"{prefix}.1.0.bias": torch.zeros(hidden),
                f"{prefix}.1.1.weight": draw(hidden * ffn_ratio, hidden),
                f"{prefix}.1.3.weight": draw(hidden, hidden * ffn_ratio),
            }
        )
    for key_id, block_channels in ip_adapter_attention_slots(unet):
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = draw(block_channels, cross_attention_dim, times=slot_scale)
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = draw(block_channels, cross_attention_dim, times=slot_scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: (value if dtype is None else value.to(dtype)).contiguous() for key, value in tensors.items()}, path)
