"""The tests' name for the tiny pipeline, which lives in the library so that dry runs can build it too."""

from lifelong.bench.tiny import WORDS, tiny_pipeline, tiny_tokenizer

__all__ = ["WORDS", "tiny_pipeline", "tiny_tokenizer"]
