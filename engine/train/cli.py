"""Options of ``mmpp train`` and what the command prints.

The parser and the error handling stay in :mod:`engine.cli` (one ``error[CODE]: ...``
line, exit status 2 for anything the user can fix); this module only adds the
training options and turns them into a :class:`~engine.train.trainer.TrainConfig`,
so ``mmpp train``, ``python -m engine.train`` and ``accelerate launch -m engine.train``
accept exactly the same command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TINY_NOTE = (
    "note: this LoRA was trained on the tiny test-sized model (random weights); it only fits that model "
    "and its pictures are noise."
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (off) or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mmpp train`` options (defaults mirror :class:`TrainConfig`)."""
    parser.description = (
        "Train a portrait or style LoRA on a folder of pictures (SD 1.5 or SDXL; FLUX.2 [klein]: style only; via "
        "accelerate and peft) and "
        "write it as a .safetensors file the engine loads. Multi-GPU: accelerate launch -m engine.train ..."
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        required=True,
        type=Path,
        help="folder of .jpg/.jpeg/.png/.webp pictures, each with an optional same-name .txt caption",
    )
    data.add_argument(
        "--kind",
        required=True,
        choices=["portrait", "style"],
        help="portrait: faces are found, aligned and cropped like selfies; style: whole pictures",
    )
    data.add_argument(
        "--trigger",
        default=None,
        help="the word the LoRA binds to (default mmppface / mmppstyle); used in template captions "
        "and for {trigger} in .txt captions",
    )
    data.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="training size in px (default: 512 SD 1.5, 1024 SDXL, 64 tiny); SDXL batches by aspect-ratio bucket",
    )
    data.add_argument("--center-crop", action="store_true", help="centre crops instead of random crops")
    data.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")

    model = parser.add_argument_group("model")
    model.add_argument(
        "--base",
        default="",
        help="base model: Hub id, diffusers folder or .safetensors file (default: MMPP_BASE_MODEL)",
    )
    model.add_argument(
        "--weights",
        "--profile",  # the old name, accepted for one more release
        dest="weights",
        choices=["default", "tiny", "tiny-sdxl", "tiny-klein"],
        default="default",
        help="tiny / tiny-sdxl / tiny-klein: the offline test-sized model instead of --base",
    )
    model.add_argument("--out", required=True, type=Path, help="the LoRA file to write (.safetensors)")
    model.add_argument("--rank", type=_positive_int, default=16, help="LoRA rank (default 16)")
    model.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank, i.e. scale 1)")
    model.add_argument("--train-text-encoder", action="store_true", help="also train LoRAs on the text encoder(s)")

    run = parser.add_argument_group("optimisation")
    run.add_argument("--steps", type=_positive_int, default=1000, help="optimizer steps (default 1000)")
    run.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    run.add_argument("--lr-warmup", type=_count, default=0, help="steps of linear warm-up (default 0)")
    run.add_argument("--batch", type=_positive_int, default=1, help="pictures per batch and process (default 1)")
    run.add_argument("--grad-accum", type=_positive_int, default=1, help="batches per optimizer step (default 1)")
    run.add_argument("--gradient-checkpointing", action="store_true", help="less memory, about 30%% slower")
    run.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "fp16", "bf16"],
        default="auto",
        help="auto: accelerate's config, else bf16/fp16 on GPUs that run it, else fp32",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")

    progress = parser.add_argument_group("checkpoints and validation")
    progress.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="checkpoints, validation pictures and reports (default: beside --out, named after it)",
    )
    progress.add_argument(
        "--checkpoint-every",
        type=_count,
        default=500,
        help="save a resumable checkpoint every N steps, 0 = never (default 500)",
    )
    progress.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="continue from a checkpoint folder (or the latest one in a work folder)",
    )
    progress.add_argument(
        "--validate-every", type=_count, default=0, help="draw validation pictures every N steps, 0 = never (default 0)"
    )
    progress.add_argument("--validation-prompt", default=None, help="default: the caption template")
    progress.add_argument("--validation-images", type=_positive_int, default=2, help="pictures per validation")
    progress.add_argument("--validation-steps", type=_positive_int, default=20, help="denoising steps per picture")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_arguments(arguments: argparse.Namespace):  # noqa: ANN201 - TrainConfig, imported lazily
    from engine.train.trainer import TrainConfig

    return TrainConfig(
        data_dir=arguments.data,
        kind=arguments.kind,
        out=arguments.out,
        base=arguments.base,
        weights=arguments.weights,
        rank=arguments.rank,
        alpha=arguments.alpha,
        steps=arguments.steps,
        lr=arguments.lr,
        lr_warmup=arguments.lr_warmup,
        batch=arguments.batch,
        grad_accum=arguments.grad_accum,
        resolution=arguments.resolution,
        resume=arguments.resume,
        checkpoint_every=arguments.checkpoint_every,
        validate_every=arguments.validate_every,
        validation_prompt=arguments.validation_prompt,
        validation_images=arguments.validation_images,
        validation_steps=arguments.validation_steps,
        gradient_checkpointing=arguments.gradient_checkpointing,
        train_text_encoder=arguments.train_text_encoder,
        trigger=arguments.trigger,
        seed=arguments.seed,
        mixed_precision=arguments.mixed_precision,
        center_crop=arguments.center_crop,
        flip=arguments.flip,
        work_dir=arguments.work_dir,
        progress=arguments.progress,
    )


def run(arguments: argparse.Namespace) -> int:
    """Train, print the LoRA's path on stdout and how to use it on stderr."""
    from engine.train.trainer import train

    config = config_from_arguments(arguments)
    result = train(config)
    if not result.main_process:
        return 0
    if result.losses:
        last = result.losses[max(result.losses)]
        done = f"steps {result.start_step + 1}-{result.steps}, last loss {last:.4f}"
    else:
        done = f"nothing left to train after step {result.start_step}"
    print(
        f"trained {config.kind} LoRA ({done}) in {result.seconds:.0f}s; work folder {result.work_dir}", file=sys.stderr
    )
    if config.kind == "portrait":
        print(f"use it: MMPP_PORTRAIT_LORA={result.lora}", file=sys.stderr)
    elif result.family == "flux2-klein":
        print(f'use it: klein_lora = "{result.lora}" in the style\'s entry of styles.toml', file=sys.stderr)
    else:
        print(f'use it: lora = "{result.lora}" in the style\'s entry of styles.toml', file=sys.stderr)
    if result.test_sized:
        print(TINY_NOTE, file=sys.stderr)
    print(result.lora)
    return 0
