"""A tiny random CLIP for the evaluation tests (test support: no product code builds one).

It has the real architecture and on-disk format, so the product's CLIP loader
(:func:`engine.evaluate.scorers.load_clip_scorer`) runs its real code path on
it; the marker file it leaves (``TEST_SIZED_MARKER``) makes every report label
its scores meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.evaluate.scorers import TEST_SIZED_MARKER


def build_tiny_clip(folder: Path) -> Path:
    """Write a tiny random CLIP (model, tokenizer, image processor) to ``folder`` and return it."""
    import tempfile

    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers: the plain class is the PIL one
        from transformers import CLIPImageProcessor as ImageProcessor

    from engine.models import _tiny_corpus, build_tiny_tokenizer_files

    with tempfile.TemporaryDirectory() as scratch:
        build_tiny_tokenizer_files(Path(scratch), _tiny_corpus())
        tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=77)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPModel(config)
    image_processor = ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    (folder / TEST_SIZED_MARKER).write_text(json.dumps({"test_sized": True, "note": "random weights"}))
    return folder
