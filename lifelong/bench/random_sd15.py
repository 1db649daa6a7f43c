"""An SD-1.5-architecture pipeline from its published configs with random weights: real sizes, no download.

Only for measuring speed and memory at real scale; its images are noise. The tokenizer is a word-level one
over a synthetic vocabulary of CLIP's size (49,408), since CLIP's BPE vocabulary cannot be downloaded here.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from lifelong.base import BaseConfig, BaseModel, prepare_base, resolve_dtype
from lifelong.bench.tiny import word_tokenizer

VOCAB = 49408
MAX_LENGTH = 77


def _tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|startoftext|>", "<unk>"]
    words = [f"w{i}" for i in range(VOCAB - len(specials))]
    vocab = {token: index for index, token in enumerate([*specials, *words])}
    end = "<|endoftext|>"
    return word_tokenizer(vocab, MAX_LENGTH, bos_token="<|startoftext|>", eos_token=end, pad_token=end)


def random_sd15(seed: int = 0, dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """UNet 860 M, VAE 84 M, CLIP ViT-L/14 text tower 123 M parameters, as in stable-diffusion-v1-5."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the defaults are SD-1.x's
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=MAX_LENGTH,
            hidden_act="quick_gelu",
            bos_token_id=1,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def random_sd15_base(config: BaseConfig | None = None) -> BaseModel:
    """That pipeline as a base, on ``config``'s device (default: CUDA if there is one) and dtype."""
    config = config or BaseConfig()
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = random_sd15(dtype=resolve_dtype(config.dtype, device))
    return prepare_base(pipe, replace(config, model="random-sd15", device=str(device)), device)
