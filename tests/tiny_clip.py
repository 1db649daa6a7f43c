"""A tiny real CLIPModel with its image processor and tokenizer, built from configs (no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny import WORDS, tiny_pipeline
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

from lifelong.bench.tiny import TINY_TEXT
from lifelong.metrics import EvalClip


def clip_tokenizer(max_length: int = 16) -> PreTrainedTokenizerFast:
    """The tiny vocabulary with bos/eos around every prompt: CLIP pools its text feature at the eos."""
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=max_length,
    )


def tiny_clip(seed: int = 0) -> EvalClip:
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), **TINY_TEXT),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    model = CLIPModel(config).eval()
    model.requires_grad_(False)
    return EvalClip(model, processor, tokenizer)


def save_tiny_model_and_clip(folder: Path) -> tuple[Path, Path]:
    """A tiny pipeline and a tiny CLIP saved as folders, as the benchmark CLIs take them."""
    model, clip = folder / "model", folder / "clip"
    tiny_pipeline(seed=3).save_pretrained(model)
    evaluation = tiny_clip()
    for part in (evaluation.model, evaluation.image_processor, evaluation.tokenizer):
        part.save_pretrained(clip)
    return model, clip
