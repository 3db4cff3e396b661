"""The LoRA training loop: SD 1.5 and SDXL, UNet (and optionally text encoders), on accelerate + peft.

FLUX.2 [klein] style LoRAs train through the same loop (data, accelerate, checkpoints, resume) with
their own model setup, loss and export: :class:`engine.train.klein.KleinLoraTrainer`.

It follows diffusers' own LoRA training scripts (``train_text_to_image_lora.py`` and its
SDXL sibling) so that what comes out behaves like every other LoRA: peft adapters on the
attention projections with gaussian init, the standard noise-prediction loss with a DDPM
scheduler built from the base's scheduler config, latents scaled by the VAE's factor, and
for SDXL both text encoders, pooled embeddings and the size/crop ``add_time_ids``.

What differs, and why:

* The base loads through the engine's own loader (``load_base_pipeline``), so a Hub id, a
  diffusers folder, a single ``.safetensors`` file and the tiny test-sized weights all train the
  same way they generate.
* Every random draw (batch order, crops, flips, timesteps, noise, VAE sampling) comes from a
  stream keyed by ``(seed, purpose, global batch number)`` (see :mod:`engine.train.data`),
  so a run resumed from a checkpoint continues *exactly*: same batches, same noise, same
  losses, same weights as a run that was never interrupted.  Checkpoints hold the adapter
  weights, optimizer, LR scheduler and accelerate's RNG states (``save_state``) plus a small
  JSON with the step, the stream counters and the settings that shape the trajectory, which
  a resume checks.
* Checkpoints store only the adapters (a few MB), never the frozen base, through
  accelerate's save/load hooks, as diffusers' scripts do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.train.data import (
    CAPTION_TEMPLATES,
    KINDS,
    STREAM_NOISE,
    BatchPlan,
    Kind,
    RenderedBatch,
    load_dataset,
    render_batch,
    stream_seed,
)
from mmpp.errors import ErrorCode, MmppError

if TYPE_CHECKING:
    from engine.models import Family

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"
STATE_FORMAT = 1
#: The LoRA as of a checkpoint, in the final file format, so any checkpoint can be tried out.
CHECKPOINT_LORA = "lora.safetensors"
LOSS_LOG = "losses.jsonl"
DATA_REPORT = "data_report.json"

#: The attention projections, as in diffusers' LoRA scripts and the tiny weights' LoRAs.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

TINY_WEIGHTS: dict[str, Family] = {"tiny": "sd15", "tiny-sdxl": "sdxl", "tiny-klein": "flux2-klein"}
WEIGHTS_CHOICES = ("default", *TINY_WEIGHTS)
#: The resolution each family was trained at; the tiny weights draw 64 px.
DEFAULT_RESOLUTION = {"sd15": 512, "sdxl": 1024, "flux2-klein": 1024}
TINY_RESOLUTION = 64
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")

#: Settings that shape the sequence of updates.  A resume must repeat them, or it would not
#: continue the run it claims to continue; ``--steps``, checkpoint and validation options may change.
TRAJECTORY_KEYS = (
    "base",
    "family",
    "kind",
    "rank",
    "alpha",
    "lr",
    "lr_warmup",
    "batch",
    "grad_accum",
    "resolution",
    "train_text_encoder",
    "trigger",
    "seed",
    "center_crop",
    "flip",
    "max_grad_norm",
    "data_sha256",
)


@dataclass
class TrainConfig:
    """Everything ``mmpp train`` takes; the defaults are the command's defaults."""

    data_dir: Path
    kind: Kind
    out: Path
    #: Hub id, diffusers folder or single file; empty means ``MMPP_BASE_MODEL``.
    base: str = ""
    #: ``default`` (``--base`` or ``MMPP_BASE_MODEL``), or the tiny test-sized ``tiny`` / ``tiny-sdxl`` /
    #: ``tiny-klein``.
    weights: str = "default"
    rank: int = 16
    #: peft's ``lora_alpha``; ``None`` means equal to the rank (scale 1), as diffusers' scripts do.
    alpha: float | None = None
    steps: int = 1000
    lr: float = 1e-4
    lr_warmup: int = 0
    batch: int = 1
    grad_accum: int = 1
    #: ``None``: the family's native size (512 SD 1.5, 1024 SDXL, 64 tiny).
    resolution: int | None = None
    resume: Path | None = None
    checkpoint_every: int = 500
    validate_every: int = 0
    validation_prompt: str | None = None
    validation_images: int = 2
    validation_steps: int = 20
    gradient_checkpointing: bool = False
    train_text_encoder: bool = False
    trigger: str | None = None
    seed: int = 0
    mixed_precision: str = "auto"
    center_crop: bool = False
    flip: bool = True
    max_grad_norm: float = 1.0
    #: Checkpoints, validation pictures, reports; ``None``: beside ``out``, named after it.
    work_dir: Path | None = None
    progress: bool = True

    @property
    def work_folder(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.out).with_suffix("")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else float(self.rank)

    def check(self) -> None:
        """Refuse impossible settings before anything is loaded."""
        problems = []
        if self.kind not in KINDS:
            problems.append(f"--kind must be portrait or style, not '{self.kind}'")
        if self.weights not in WEIGHTS_CHOICES:
            problems.append(f"--weights must be one of {', '.join(WEIGHTS_CHOICES)}")
        if Path(self.out).suffix != ".safetensors":
            problems.append("--out must name a .safetensors file")
        for name, value, low in (
            ("--rank", self.rank, 1),
            ("--steps", self.steps, 1),
            ("--batch", self.batch, 1),
            ("--grad-accum", self.grad_accum, 1),
            ("--checkpoint-every", self.checkpoint_every, 0),
            ("--validate-every", self.validate_every, 0),
            ("--validation-images", self.validation_images, 1),
            ("--validation-steps", self.validation_steps, 1),
            ("--lr-warmup", self.lr_warmup, 0),
        ):
            if value < low:
                problems.append(f"{name} must be at least {low}, not {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"--lr must be a positive number, not {self.lr}")
        if self.resolution is not None and (self.resolution < 32 or self.resolution % 8):
            problems.append(f"--resolution must be a multiple of 8 and at least 32, not {self.resolution}")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        if self.trigger is not None and not self.trigger.strip():
            problems.append("--trigger must not be empty")
        if self.weights in TINY_WEIGHTS and self.base:
            problems.append(f"--base and --weights {self.weights} exclude each other")
        if problems:
            raise MmppError(ErrorCode.INVALID_REQUEST, "; ".join(problems) + ".")


@dataclass
class TrainResult:
    """What a run did; ``losses`` holds only the steps this invocation ran."""

    lora: Path
    work_dir: Path
    family: str
    resolution: int
    start_step: int
    steps: int
    losses: dict[int, float]
    checkpoints: list[Path] = field(default_factory=list)
    validation_images: list[Path] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    test_sized: bool = False
    #: False in the other processes of a multi-process run; only the main one reports.
    main_process: bool = True


def train(config: TrainConfig, settings: Any = None) -> TrainResult:
    """Train a LoRA as ``config`` says and write it to ``config.out``; the base's family picks the trainer."""
    if settings is None:
        from engine.settings import EngineSettings

        settings = EngineSettings()
    config.check()
    sources = resolve_training_sources(config, settings)
    if sources.family == "flux2-klein":
        from engine.train.klein import KleinLoraTrainer

        return KleinLoraTrainer(config, settings, sources).run()
    return LoraTrainer(config, settings, sources).run()


def choose_mixed_precision(requested: str) -> str:
    """``auto``: what ``accelerate config`` chose, else bf16/fp16 where the GPU runs them, else none.

    CPUs train in fp32: bf16 autocast there is slow on many processors and changes the
    numbers, so it is only used when asked for.
    """
    if requested != "auto":
        return requested
    configured = os.environ.get("ACCELERATE_MIXED_PRECISION", "")
    if configured in MIXED_PRECISION[1:]:
        return configured
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the latest checkpoint under a work or ``checkpoints`` folder."""
    path = Path(path).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = [child for child in folder.glob("step-*") if (child / STATE_FILE).is_file()] if folder.is_dir() else []
        if found:
            return max(found, key=lambda child: json.loads((child / STATE_FILE).read_text())["step"])
    raise MmppError(
        ErrorCode.INVALID_REQUEST,
        f"No checkpoint at {path}: give a checkpoint folder (WORK_DIR/checkpoints/step-N) "
        "or a work folder that holds some.",
    )


def resolve_training_sources(config: TrainConfig, settings: Any) -> Any:
    """The base to train on, through the engine's model sources (tiny weights included).

    What the family's trainer cannot do is refused here, before any weights load."""
    from engine.models import KLEIN, ModelSources, build_tiny_klein_weights, build_tiny_weights, detect_family

    if config.weights in TINY_WEIGHTS:
        from mmpp.catalogue import load_catalogue

        names = load_catalogue(settings.styles_file).names
        family = TINY_WEIGHTS[config.weights]
        if family == KLEIN:
            check_klein_options(config)
            return build_tiny_klein_weights(Path(settings.cache_dir) / "tiny", names)
        return build_tiny_weights(Path(settings.cache_dir) / "tiny", family, names)
    base = config.base or settings.base_model
    family = detect_family(base)
    if family == KLEIN:
        check_klein_options(config)
        return ModelSources(base=base, family=family, label=base)
    return ModelSources(base=base, family=family, base_config=settings.base_model_config, label=base)


def check_klein_options(config: TrainConfig) -> None:
    """What the klein trainer does not do, refused in one line instead of silently skipped.

    A portrait LoRA has no place in the klein engine (the reference photo carries the person, and
    the engine loads only style LoRAs, ``klein_lora``); the Qwen3 text encoder stays frozen, as in
    diffusers' FLUX.2 LoRA scripts, where it is billions of parameters."""
    if config.kind != "style":
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            "FLUX.2 [klein] takes style LoRAs only (--kind style): the selfie itself carries the person, "
            "so klein has no portrait LoRA.",
        )
    if config.train_text_encoder:
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            "--train-text-encoder is not available for FLUX.2 [klein]: its LoRA trains the transformer only.",
        )


class LoraTrainer:
    """One training run; build it with a config and call :meth:`run`."""

    def __init__(self, config: TrainConfig, settings: Any = None, sources: Any = None) -> None:
        #: The resolved base (:func:`train` resolves it to choose the trainer); ``None``: resolved by :meth:`run`.
        self.sources = sources
        if settings is None:
            from engine.settings import EngineSettings

            settings = EngineSettings()
        self.config = config
        self.settings = settings
        self.losses: dict[int, float] = {}
        self.checkpoints: list[Path] = []
        self.validation_images: list[Path] = []

    # ------------------------------------------------------------------ setup

    def run(self) -> TrainResult:
        started = time.perf_counter()
        config = self.config
        config.check()
        checkpoint = find_checkpoint(config.resume) if config.resume else None
        sources = self.sources or resolve_training_sources(config, self.settings)
        self.sources = sources
        self.family: str = sources.family
        self.resolution = config.resolution or (
            TINY_RESOLUTION if config.weights in TINY_WEIGHTS else DEFAULT_RESOLUTION[self.family]
        )
        self.work = config.work_folder
        # Data before weights: a bad folder is refused in seconds, not after loading gigabytes.
        dataset = load_dataset(
            config.data_dir,
            config.kind,
            self.resolution,
            use_buckets=self.family == "sdxl",
            trigger=config.trigger,
        )
        self.dataset = dataset
        self._setup_accelerator()
        try:
            start_step = self._train(checkpoint)
            main = self.accelerator.is_main_process
        finally:
            self._release_accelerator()
        return TrainResult(
            lora=Path(config.out),
            work_dir=self.work,
            family=self.family,
            resolution=self.resolution,
            start_step=start_step,
            steps=config.steps,
            losses=dict(self.losses),
            checkpoints=list(self.checkpoints),
            validation_images=list(self.validation_images),
            report=dataset.report(),
            seconds=time.perf_counter() - started,
            test_sized=bool(sources.test_sized),
            main_process=main,
        )

    def _train(self, checkpoint: Path | None) -> int:
        """Load, resume, loop, export; returns the step the run started from."""
        accelerator, dataset = self.accelerator, self.dataset
        if accelerator.is_main_process:
            self.work.mkdir(parents=True, exist_ok=True)
            (self.work / DATA_REPORT).write_text(json.dumps(dataset.report(), indent=2) + "\n")
            for line in dataset.summary_lines():
                print(line, file=sys.stderr)
        state = self._read_checkpoint_state(checkpoint) if checkpoint else None
        self._setup_models()
        start_step = 0
        if checkpoint is not None and state is not None:
            accelerator.load_state(str(checkpoint))
            start_step = int(state["step"])
            logger.info("resumed from %s at step %d", checkpoint, start_step)
        self._loop(start_step)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self._export(Path(self.config.out), self.config.steps)
        accelerator.wait_for_everyone()
        return start_step

    def _release_accelerator(self) -> None:
        """End the run and forget accelerate's process-wide state.

        accelerate keeps its settings (mixed precision, CPU or not) in singletons; without the
        reset a second ``train()`` in the same process (tests, notebooks) with other settings
        would be refused.
        """
        from accelerate.state import AcceleratorState

        self.accelerator.end_training()
        AcceleratorState._reset_state(reset_partial_state=True)

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        mixed_precision = choose_mixed_precision(self.config.mixed_precision)
        unused_parameters = self.config.train_text_encoder and self.family == "sdxl"
        try:
            self.accelerator = Accelerator(
                # accelerate runs several CPU processes (torchrun, MPI) together only when told it is on CPU.
                cpu=not _has_accelerator(),
                # SDXL conditions on the first text encoder's penultimate layer, so a LoRA on its last
                # layer gets no gradient; DDP must be told to expect that.
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused_parameters)],
                mixed_precision=mixed_precision,
                gradient_accumulation_steps=self.config.grad_accum,
                project_config=ProjectConfiguration(project_dir=str(self.work)),
            )
        except (ValueError, RuntimeError) as error:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"Mixed precision '{mixed_precision}' is not available here ({error}); try --mixed-precision no.",
            ) from None
        self.mixed_precision = self.accelerator.mixed_precision

    def _trajectory(self) -> dict[str, Any]:
        config = self.config
        values = {
            "base": config.base or (config.weights if config.weights in TINY_WEIGHTS else self.sources.base),
            "family": self.family,
            "kind": config.kind,
            "rank": config.rank,
            "alpha": config.lora_alpha,
            "lr": config.lr,
            "lr_warmup": config.lr_warmup,
            "batch": config.batch,
            "grad_accum": config.grad_accum,
            "resolution": self.resolution,
            "train_text_encoder": config.train_text_encoder,
            "trigger": self.dataset.trigger,
            "seed": config.seed,
            "center_crop": config.center_crop,
            "flip": config.flip,
            "max_grad_norm": config.max_grad_norm,
            "data_sha256": self.dataset.data_sha256,
        }
        assert tuple(values) == TRAJECTORY_KEYS
        return values

    def _read_checkpoint_state(self, checkpoint: Path) -> dict[str, Any]:
        """The checkpoint's JSON, checked against this run's settings."""
        try:
            state = json.loads((checkpoint / STATE_FILE).read_text())
        except (OSError, ValueError):
            raise MmppError(ErrorCode.INVALID_REQUEST, f"{checkpoint / STATE_FILE} cannot be read.") from None
        if state.get("format") != STATE_FORMAT:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"{checkpoint} was written by another version of mmpp train.")
        saved, now = state.get("trajectory", {}), self._trajectory()
        changed = [
            f"{key} {saved.get(key)!r} (now {now[key]!r})" for key in TRAJECTORY_KEYS if saved.get(key) != now[key]
        ]
        if changed:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"The checkpoint {checkpoint} was made with other settings: {', '.join(changed)}. Resume with the "
                "same data and settings; only --steps and the checkpoint and validation options may change.",
            )
        if int(state["step"]) > self.config.steps:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"The checkpoint is at step {state['step']}, past --steps {self.config.steps}.",
            )
        processes = self.accelerator.num_processes
        if state.get("num_processes") != processes:
            logger.warning(
                "the checkpoint was made with %s processes, this run has %d: training continues, but batches are "
                "split differently, so not bit for bit as the original run would have",
                state.get("num_processes"),
                processes,
            )
        return state

    def _load_base_pipeline(self) -> Any:
        """The base model's pipeline in float32, for every family's trainer: frozen parts are cast down to
        ``weight_dtype`` (the mixed-precision setting's) afterwards, while the VAE and the adapters stay fp32."""
        import torch

        from engine.pipeline import load_base_pipeline, quiet_libraries

        quiet_libraries()
        pipeline, _ = load_base_pipeline(self.sources, torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.mixed_precision, torch.float32)
        return pipeline

    def _setup_models(self) -> None:
        import torch
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig, inject_adapter_in_model

        config, accelerator = self.config, self.accelerator
        pipeline = self._load_base_pipeline()
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        device = accelerator.device
        self.unet, self.vae = pipeline.unet, pipeline.vae
        self.tokenizers = [pipeline.tokenizer]
        self.text_encoders = [pipeline.text_encoder]
        if self.family == "sdxl":
            self.tokenizers.append(pipeline.tokenizer_2)
            self.text_encoders.append(pipeline.text_encoder_2)
        for model in (self.unet, self.vae, *self.text_encoders):
            model.requires_grad_(False)
        # The SDXL VAE overflows in fp16, and encoding is a small part of a step: keep it fp32.
        self.vae.to(device, dtype=torch.float32)
        self.unet.to(device, dtype=self.weight_dtype)
        for encoder in self.text_encoders:
            encoder.to(device, dtype=self.weight_dtype)
        set_seed(config.seed)  # the adapters' gaussian init
        alpha = config.lora_alpha
        self.unet.add_adapter(
            LoraConfig(r=config.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=UNET_TARGETS)
        )
        trained: dict[str, Any] = {"unet": self.unet}
        if config.train_text_encoder:
            for index, encoder in enumerate(self.text_encoders):
                # peft directly, not transformers' ``add_adapter``: transformers 5.24 refuses peft < 0.22 there
                # (loading needs no such version: diffusers loads text-encoder LoRAs with ``load_adapter``).
                inject_adapter_in_model(
                    LoraConfig(
                        r=config.rank,
                        lora_alpha=alpha,
                        init_lora_weights="gaussian",
                        target_modules=TEXT_ENCODER_TARGETS,
                    ),
                    encoder,
                    adapter_name="default",
                )
                trained["text_encoder" if index == 0 else "text_encoder_2"] = encoder
        if self.weight_dtype != torch.float32:
            cast_training_params(list(trained.values()), dtype=torch.float32)
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                for encoder in self.text_encoders:
                    _enable_text_encoder_checkpointing(encoder)
        self._prepare_training(trained)

    def _prepare_training(self, trained: dict[str, Any]) -> None:
        """Optimizer, LR schedule, checkpoint hooks and accelerate's wrapping of the models with adapters:
        the same for every family."""
        import torch
        from diffusers.optimization import get_scheduler

        config, accelerator = self.config, self.accelerator
        for model in trained.values():
            model.train()
        self.trained = trained
        parameters = [p for model in trained.values() for p in model.parameters() if p.requires_grad]
        self.parameters = parameters
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        # accelerate steps the scheduler once per process for each optimizer step.
        scheduler = get_scheduler(
            "constant_with_warmup", optimizer, num_warmup_steps=config.lr_warmup * accelerator.num_processes
        )
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)
        names = list(trained)
        prepared = accelerator.prepare(*trained.values(), optimizer, scheduler)
        self.prepared = dict(zip(names, prepared[: len(names)], strict=True))
        self.optimizer, self.lr_scheduler = prepared[len(names) :]

    # ------------------------------------------------------------------ checkpoint hooks

    def _name_of(self, model: Any) -> str:
        unwrapped = self.accelerator.unwrap_model(model)
        for name, candidate in self.trained.items():
            if candidate is unwrapped:
                return name
        raise AssertionError(f"unknown model {type(unwrapped).__name__}")

    def _save_hook(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        """Save only the adapters (peft names, fp32), not the frozen base accelerate would save."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            for model in models:
                name = self._name_of(model)
                state = get_peft_model_state_dict(self.accelerator.unwrap_model(model))
                tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
                save_file(tensors, str(Path(output_dir) / f"adapter-{name}.safetensors"))
        weights.clear()

    def _load_hook(self, models: list[Any], input_dir: str) -> None:
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        while models:
            model = self.accelerator.unwrap_model(models.pop())
            name = self._name_of(model)
            path = Path(input_dir) / f"adapter-{name}.safetensors"
            if not path.is_file():
                raise MmppError(ErrorCode.INVALID_REQUEST, f"The checkpoint {input_dir} has no {path.name}.")
            state = load_file(str(path))
            expected = get_peft_model_state_dict(model)
            if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
                raise MmppError(ErrorCode.INVALID_REQUEST, f"The adapter in {path} does not fit this model and rank.")
            set_peft_model_state_dict(model, state, adapter_name="default")

    # ------------------------------------------------------------------ the loop

    def _loop(self, start_step: int) -> None:
        from tqdm.auto import tqdm

        config, accelerator = self.config, self.accelerator
        plan = BatchPlan([example.bucket for example in self.dataset.examples], config.batch, config.seed)
        self.plan = plan
        processes, rank = accelerator.num_processes, accelerator.process_index
        micro = start_step * config.grad_accum  # micro-batches done by each process
        log_path = self.work / LOSS_LOG
        if accelerator.is_main_process:
            self._truncate_loss_log(log_path, start_step)
        bar = tqdm(
            total=config.steps,
            initial=start_step,
            desc=f"train {config.kind} LoRA",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not (config.progress and accelerator.is_local_main_process),
        )
        models = list(self.prepared.values())
        step = start_step
        try:
            while step < config.steps:
                micro_losses = []
                for _ in range(config.grad_accum):
                    number = micro * processes + rank
                    _, indices = plan.batch(number)
                    batch = render_batch(
                        self.dataset, indices, number, config.seed, center_crop=config.center_crop, flip=config.flip
                    )
                    with accelerator.accumulate(*models):
                        loss = self._loss(batch, number)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and config.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(self.parameters, config.max_grad_norm)
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    micro_losses.append(accelerator.gather(loss.detach().float().reshape(1)).mean().item())
                    micro += 1
                if not accelerator.sync_gradients:
                    raise AssertionError("gradient accumulation fell out of step with the optimizer steps")
                step += 1
                loss_value = sum(micro_losses) / len(micro_losses)
                self.losses[step] = loss_value
                if accelerator.is_main_process:
                    with log_path.open("a") as log:
                        log.write(json.dumps({"step": step, "loss": loss_value}) + "\n")
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
                bar.update(1)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    self._checkpoint(step, micro)
                if config.validate_every and step % config.validate_every == 0:
                    self._validate(step)
        finally:
            bar.close()

    def _loss(self, batch: RenderedBatch, number: int) -> Any:
        """The standard noise-prediction loss for one micro-batch."""
        import torch
        import torch.nn.functional as functional

        device, dtype = self.accelerator.device, self.weight_dtype
        generator = torch.Generator("cpu").manual_seed(stream_seed(self.config.seed, STREAM_NOISE, number))
        pixels = torch.from_numpy(batch.pixels).to(device, torch.float32)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample(generator=generator)
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            latents = ((latents - shift) * self.vae.config.scaling_factor).to(dtype)
        # Drawn on the CPU generator and moved: the same numbers on every device.
        noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
        ).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        elif self.prediction_type == "sample":
            target = latents
        else:
            raise MmppError(ErrorCode.MODEL_UNAVAILABLE, f"Unknown prediction type {self.prediction_type!r}.")
        hidden, pooled = self._encode_text(batch.captions)
        extra: dict[str, Any] = {}
        if self.family == "sdxl":
            extra["added_cond_kwargs"] = {
                "text_embeds": pooled,
                "time_ids": torch.tensor(batch.time_ids, device=device, dtype=dtype),
            }
        prediction = self.prepared["unet"](noisy, timesteps, hidden, return_dict=False, **extra)[0]
        return functional.mse_loss(prediction.float(), target.float(), reduction="mean")

    def _encode_text(self, captions: list[str]) -> tuple[Any, Any]:
        """Prompt embeddings (SDXL: both encoders' penultimate layers side by side, and pooled)."""
        import torch

        grad = self.config.train_text_encoder
        encoders = (
            [self.prepared.get("text_encoder", self.text_encoders[0]), self.prepared.get("text_encoder_2")]
            if grad
            else list(self.text_encoders)
        )
        with contextlib.nullcontext() if grad else torch.no_grad():
            if self.family != "sdxl":
                ids = self._tokens(self.tokenizers[0], captions)
                return encoders[0](ids, return_dict=False)[0], None
            parts, pooled = [], None
            for tokenizer, encoder in zip(self.tokenizers, encoders, strict=True):
                output = encoder(self._tokens(tokenizer, captions), output_hidden_states=True, return_dict=True)
                parts.append(output.hidden_states[-2])
                pooled = getattr(output, "text_embeds", None) if pooled is None else pooled
            return torch.cat(parts, dim=-1), pooled

    def _tokens(self, tokenizer: Any, captions: list[str]) -> Any:
        return tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.accelerator.device)

    # ------------------------------------------------------------------ checkpoints, validation, export

    def _checkpoint(self, step: int, micro: int) -> None:
        accelerator = self.accelerator
        path = self.work / "checkpoints" / f"step-{step}"
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            self._export(path / CHECKPOINT_LORA, step)
            processes = accelerator.num_processes
            epoch, _ = divmod(micro * processes, self.plan.batches_per_epoch)
            state = {
                "format": STATE_FORMAT,
                "step": step,
                "micro_step": micro,
                "epoch": epoch,
                "num_processes": processes,
                # Counter-based randomness: the next batch number is the whole random state.
                "rng": {
                    "scheme": "numpy SeedSequence([seed, stream, global batch, ...])",
                    "seed": self.config.seed,
                    "next_global_batch": micro * processes,
                },
                "trajectory": self._trajectory(),
                "mixed_precision": self.mixed_precision,
                "loss": self.losses.get(step),
            }
            (path / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
            self.checkpoints.append(path)
        accelerator.wait_for_everyone()

    def _validate(self, step: int) -> None:
        """A few pictures with the current LoRA and fixed seeds, to watch it learn."""
        import torch

        accelerator = self.accelerator
        if accelerator.is_main_process:
            config = self.config
            prompt = config.validation_prompt or CAPTION_TEMPLATES[config.kind].format(trigger=self.dataset.trigger)
            folder = self.work / "validation"
            folder.mkdir(parents=True, exist_ok=True)
            for model in self.trained.values():
                model.eval()
            try:
                with torch.no_grad(), accelerator.autocast():
                    for index in range(config.validation_images):
                        generator = torch.Generator("cpu").manual_seed(config.seed + index)
                        image = self.pipeline(
                            prompt=prompt,
                            num_inference_steps=config.validation_steps,
                            generator=generator,
                            height=self.resolution,
                            width=self.resolution,
                        ).images[0]
                        path = folder / f"step-{step}-{index}.png"
                        image.save(path)
                        self.validation_images.append(path)
            finally:
                for model in self.trained.values():
                    model.train()
        accelerator.wait_for_everyone()

    def _export(self, path: Path, step: int) -> None:
        from engine.train.export import save_lora

        text_encoders = {name: model for name, model in self.trained.items() if name != "unet"}
        info = self._export_info(step, train_text_encoder=self.config.train_text_encoder)
        save_lora(path, type(self.pipeline), self.unet, text_encoders, info)

    def _export_info(self, step: int, **family_fields: Any) -> dict[str, Any]:
        """What a LoRA file records of how it was made, the same for every family (each adds its own fields),
        so that a file can be traced to its data, settings and run whichever trainer wrote it."""
        from engine.train.export import mmpp_version

        config = self.config
        return {
            "base_model": self._trajectory()["base"],
            "family": self.family,
            "kind": config.kind,
            "rank": config.rank,
            "alpha": config.lora_alpha,
            "steps": step,
            "lr": config.lr,
            "batch": config.batch,
            "grad_accum": config.grad_accum,
            "resolution": self.resolution,
            "data_sha256": self.dataset.data_sha256,
            "images": len(self.dataset.examples),
            "trigger": self.dataset.trigger,
            "seed": config.seed,
            "mixed_precision": self.mixed_precision,
            "test_sized": bool(self.sources.test_sized),
            "version": mmpp_version(),
            **family_fields,
        }

    @staticmethod
    def _truncate_loss_log(path: Path, start_step: int) -> None:
        """Keep the log's lines up to the resume point, so it reads as one run."""
        if not path.exists():
            return
        if start_step == 0:
            path.unlink()
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
        path.write_text("".join(line + "\n" for line in kept))


def _has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps is not None and mps.is_available())


def _enable_text_encoder_checkpointing(encoder: Any) -> None:
    """transformers 5 renamed ``gradient_checkpointing_enable``; use the new name where it exists."""
    options = {"use_reentrant": False}
    if hasattr(encoder, "activation_checkpointing_enable"):
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
