"""A word-level tokenizer for the bundled world, built offline from its vocabulary.

Why word-level: the world's captions use ~130 words, so one id per word keeps the text encoder tiny and
every word learnable in minutes. It behaves like SD's CLIP tokenizer where the pipeline and the core
depend on it: bos/eos around each prompt, padding with the eos token to `model_max_length`, truncation,
lower-casing, `add_tokens` for concept slots, and an unk token for words the world never saw.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from .data import world_words

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
UNK = "<|unk|>"
# eos must not have id 2: CLIPTextModel treats eos_token_id == 2 as "legacy" and pools at the highest id,
# which would be a user's added token.
SPECIAL_TOKENS = (BOS, EOS, UNK)
MODEL_MAX_LENGTH = 32


def build_tokenizer(words: list[str], model_max_length: int = MODEL_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `words`: ids 0, 1, 2 are bos, eos (= pad), unk; words follow in order."""
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,
        model_max_length=model_max_length,
    )


def world_tokenizer() -> PreTrainedTokenizerFast:
    """The world's tokenizer, rebuilt from the vocabulary (the same every time)."""
    return build_tokenizer(world_words())


def tokenize(captions: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's model_max_length, as the diffusion pipeline pads prompts."""
    tokenizer = world_tokenizer()
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
