"""Tiny real SD-1.x components built from configs (as diffusers' fast tests do): no download, CPU, fast.

The tests' base, and the dry run of the GPU check (``python -m lifelong.bench.gpu_check --tiny``).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

WORDS = [
    "a",
    "an",
    "the",
    "on",
    "of",
    "in",
    "and",
    "with",
    "photo",
    "dog",
    "cat",
    "mug",
    "toy",
    "red",
    "blue",
    "green",
    "object",
    "animal",
    "picture",
    "left",
    "right",
]


# The tiny text tower, shared with the tests' tiny eval CLIP so that both read the same token ids
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,
)


def word_tokenizer(vocab: dict[str, int], max_length: int, **special: str) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``vocab`` (no BPE files to download), with its special tokens
    (``pad_token``, ``bos_token``, ``eos_token``; ``<unk>`` must be in ``vocab``)."""
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", model_max_length=max_length, **special
    )


def tiny_tokenizer(max_length: int = 16) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    return word_tokenizer(vocab, max_length, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def tiny_pipeline(seed: int = 0, **scheduler: object) -> StableDiffusionPipeline:
    """SD-1.x's ε schedule, or any other DDIM config through ``scheduler`` (e.g. SD-2.x's v-prediction)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TINY_TEXT))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=16,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        **scheduler,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
