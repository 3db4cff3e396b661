"""Worker-side configuration, read from the environment (and ``.env``).

Every variable carries the ``MMPP_`` prefix (``REDIS_URL`` aside, which many
hosting providers set under that exact name) and is documented in
``.env.example``.  The bot has its own settings class; the two share only the
broker address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mmpp.contract import DEFAULT_JOB_TIMEOUT_SECONDS


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mmpp"


class EngineSettings(BaseSettings):
    """Where the weights come from and how the worker runs them."""

    model_config = SettingsConfigDict(env_prefix="MMPP_", env_file=".env", extra="ignore", populate_by_name=True)

    #: ``auto`` tries the real weights and falls back to the tiny test-sized
    #: model, saying so; ``default`` insists on the real weights.
    #: (``MMPP_MODEL_PROFILE`` is the old name, read for one more release.)
    weights: Literal["auto", "default", "tiny", "tiny-sdxl", "tiny-klein"] = Field(
        default="auto", validation_alias=AliasChoices("MMPP_WEIGHTS", "MMPP_MODEL_PROFILE")
    )
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    #: Diffusers-format folder or Hub id whose configs describe a single-file
    #: checkpoint; needed offline because single files carry no configs.
    base_model_config: str = ""
    #: The portrait LoRA is trained by ``mmpp train --kind portrait``; empty
    #: means none, and every style's portrait scale is then ignored.
    portrait_lora: str = ""
    lcm_lora_sd15: str = "latent-consistency/lcm-lora-sdv1-5:pytorch_lora_weights.safetensors"
    lcm_lora_sdxl: str = "latent-consistency/lcm-lora-sdxl:pytorch_lora_weights.safetensors"
    ip_adapter_sd15: str = "h94/IP-Adapter:models/ip-adapter-plus-face_sd15.safetensors"
    ip_adapter_sdxl: str = "h94/IP-Adapter:sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors"
    #: Relative to the IP-Adapter repository or folder; both face adapters use
    #: the ViT-H encoder that lives under ``models/``.
    ip_adapter_image_encoder: str = "models/image_encoder"
    styles_file: Path | None = None
    cache_dir: Path = Field(default_factory=default_cache_dir)
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    #: Off by default: compiling takes minutes and only pays off on GPUs.
    compile: bool = False
    #: Most pictures one pipeline call paints at once; a larger job is split into
    #: several calls, so memory stays bounded on small GPUs (1 = one call per picture).
    max_batch_size: int = Field(default=4, ge=1, le=16)
    #: AutoencoderTiny (TAESD) weights per family: they decode fast-mode pictures and every
    #: preview; missing weights fall back to the full VAE (and no previews), with one log line.
    tiny_decoder_sd15: str = "madebyollin/taesd"
    tiny_decoder_sdxl: str = "madebyollin/taesdxl"
    #: Live previews while a job paints: at most one every this many steps and seconds (0 steps: off).
    preview_every_steps: int = Field(default=2, ge=0)
    preview_min_seconds: float = Field(default=1.0, ge=0.0)
    #: How much of a picture an upscale paints again (img2img strength): low, so the double keeps the
    #: picture people chose and only gains detail; 1 would be a new picture at twice the size.
    upscale_strength: float = Field(default=0.3, gt=0.0, le=1.0)
    #: NSFW check on the pictures: auto (when its weights load), off, or required (refuse jobs without it).
    safety_checker: Literal["auto", "off", "required"] = "auto"
    safety_checker_model: str = "CompVis/stable-diffusion-safety-checker"
    #: Port for the worker's /metrics (Prometheus) and /healthz; 0 turns it off.
    metrics_port: int = 0
    #: "text" for people, "json" for log collectors.
    log_format: str = "text"
    #: Longest side of the generated pictures; 0 means the model's native size.
    resolution: int = 0
    redis_url: str = Field(default="", validation_alias=AliasChoices("REDIS_URL", "MMPP_REDIS_URL"))
    #: The queue the worker consumes and the bot sends to.
    queue: str = "mmpp"
    #: Where the embedded (server-less) broker keeps its SQLite files.
    state_dir: Path = Path("var")
    task_soft_time_limit: int = 540
    task_hard_time_limit: int = 600
    #: Seconds before Redis hands an unacknowledged job (its worker died) to another worker;
    #: just above the hard limit, so a dead worker's job comes back within the bot's patience.
    broker_visibility_timeout: int = 660
    #: Seconds a new pool process may take to report ready; it loads the model first.
    worker_proc_alive_timeout: float = 300.0
    #: The bot's patience with a job (the same ``MMPP_JOB_TIMEOUT_SECONDS`` the bot reads): a result
    #: nobody has collected by then is of no use to anyone, so the result backend expires it after this.
    job_timeout_seconds: float = Field(default=DEFAULT_JOB_TIMEOUT_SECONDS, gt=0)
