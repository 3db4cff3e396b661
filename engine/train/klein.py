"""FLUX.2 [klein] style LoRAs: :class:`~engine.train.trainer.LoraTrainer`'s loop with klein's model, loss and file.

Everything around the model stays the trainer's: the data (:mod:`engine.train.data`, shared),
accelerate, the counter-based random streams, checkpoints and exact resumes, validation pictures.
What is klein's own, built the way ``Flux2KleinPipeline.__call__`` denoises so that the LoRA
learns on the inputs it will see:

* **Latents**: the picture through the VAE's mode (``_encode_vae_image``: no sampling), 2×2
  patchified to 4× the channels and normalised by the VAE's batch-norm statistics; packed into a
  token sequence (``_pack_latents``) with the pipeline's 4-d position ids (``_prepare_latent_ids``).
* **Conditioning**: the caption through the pipeline's own ``encode_prompt`` (Qwen3 chat template,
  hidden states of the pipeline's layers stacked), with its text position ids; the text encoder
  stays frozen.
* **Objective**: rectified flow, the one klein is trained with and its flow-matching Euler
  scheduler integrates: ``x_σ = (1 − σ)·x₀ + σ·ε`` with σ uniform in (0, 1), the transformer
  given ``timestep = σ`` (the pipeline passes ``t / 1000``) and ``guidance=None``, and the target
  the velocity ``ε − x₀`` (the scheduler steps ``x += (σ_next − σ)·v``).
* **No reference image**: a style folder holds styled pictures, not before/after pairs, so the
  LoRA learns text-to-picture on them; in the engine it steers the same attention projections
  while klein edits the selfie.
* **LoRA**: peft adapters on the attention projections of the double-stream blocks (image stream
  ``to_q/k/v/to_out.0`` and text stream ``add_q/k/v_proj/to_add_out``), saved in peft's names as
  ``Flux2LoraLoaderMixin`` loads them (:func:`engine.train.export.save_transformer_lora`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.train.data import STREAM_NOISE, RenderedBatch, stream_seed
from engine.train.trainer import LoraTrainer

#: The double-stream blocks' attention projections, both streams.
KLEIN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def flow_matching_step(
    pipeline: Any, latents: Any, noise: Any, sigmas: Any, prompt_embeds: Any, text_ids: Any
) -> tuple[dict[str, Any], Any]:
    """The transformer's inputs for one training step at noise levels ``sigmas``, and its velocity target.

    ``latents`` and ``noise`` are patchified and normalised, ``(B, C, H, W)``, as
    ``Flux2KleinPipeline.prepare_latents`` makes them; the call is the one its denoising loop makes
    (packed tokens, 4-d position ids, ``timestep = t / 1000 = σ``, no guidance embedding), so a
    prediction at σ = 1 on pure noise is exactly the pipeline's first step (tested).
    """
    spread = sigmas.view(-1, 1, 1, 1).to(latents.dtype)
    noisy = (1.0 - spread) * latents + spread * noise
    inputs = {
        "hidden_states": pipeline._pack_latents(noisy),
        "timestep": sigmas.to(latents.dtype),
        "guidance": None,
        "encoder_hidden_states": prompt_embeds,
        "txt_ids": text_ids,
        "img_ids": pipeline._prepare_latent_ids(noisy).to(latents.device),
    }
    return inputs, pipeline._pack_latents(noise - latents)


class KleinLoraTrainer(LoraTrainer):
    """A klein style-LoRA run; :func:`engine.train.trainer.train` chooses it for a klein base."""

    def _setup_models(self) -> None:
        import torch
        from accelerate.utils import set_seed
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        config, accelerator = self.config, self.accelerator
        pipeline = self._load_base_pipeline()
        device = accelerator.device
        self.transformer, self.vae, self.text_encoder = pipeline.transformer, pipeline.vae, pipeline.text_encoder
        for model in (self.transformer, self.vae, self.text_encoder):
            model.requires_grad_(False)
        # Encoding is a small part of a step and the batch-norm statistics are fp32: keep the VAE fp32.
        self.vae.to(device, dtype=torch.float32)
        self.transformer.to(device, dtype=self.weight_dtype)
        self.text_encoder.to(device, dtype=self.weight_dtype)
        set_seed(config.seed)  # the adapters' gaussian init
        self.transformer.add_adapter(
            LoraConfig(
                r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian", target_modules=KLEIN_TARGETS
            )
        )
        trained: dict[str, Any] = {"transformer": self.transformer}
        if self.weight_dtype != torch.float32:
            cast_training_params(list(trained.values()), dtype=torch.float32)
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self._prepare_training(trained)

    def _loss(self, batch: RenderedBatch, number: int) -> Any:
        """The flow-matching loss for one micro-batch: the velocity ``noise − latents`` at a uniform σ."""
        import torch
        import torch.nn.functional as functional

        device, dtype = self.accelerator.device, self.weight_dtype
        pipeline = self.pipeline
        generator = torch.Generator("cpu").manual_seed(stream_seed(self.config.seed, STREAM_NOISE, number))
        pixels = torch.from_numpy(batch.pixels).to(device, torch.float32)
        with torch.no_grad():
            latents = pipeline._encode_vae_image(image=pixels, generator=None).to(dtype)
            prompt_embeds, text_ids = pipeline.encode_prompt(prompt=batch.captions, device=device)
            # Drawn on the CPU generator and moved: the same numbers on every device.
            noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
            sigmas = torch.rand((latents.shape[0],), generator=generator).to(device, dtype)
            inputs, target = flow_matching_step(pipeline, latents, noise, sigmas, prompt_embeds.to(dtype), text_ids)
        prediction = self.prepared["transformer"](**inputs, return_dict=False)[0]
        return functional.mse_loss(prediction.float(), target.float(), reduction="mean")

    def _export(self, path: Path, step: int) -> None:
        from engine.train.export import save_transformer_lora

        info = self._export_info(
            step, train_text_encoder=False, objective="rectified flow (velocity target, uniform sigma)"
        )
        save_transformer_lora(path, type(self.pipeline), self.accelerator.unwrap_model(self.transformer), info)
