"""Prompt text helpers (lifelong.prompts) that composition relies on."""

from __future__ import annotations

from lifelong.prompts import square_prompts


def test_square_prompts_keep_each_concepts_phrase_and_the_shared_words():
    assert square_prompts("a <rex> dog and a <mug> mug on a blue background", ["rex", "mug"]) == [
        "a <rex> dog on a blue background",
        "a <mug> mug on a blue background",
    ]
    assert square_prompts("a photo of <a> and <b> in the snow", ["b", "a"]) == [
        "a photo of <b> in the snow",
        "a photo of <a> in the snow",
    ]


def test_square_prompts_split_lists_and_drop_a_token_they_cannot_separate():
    assert square_prompts("<a> dog, <b> cat, and a red <c> toy", ["a", "b", "c"]) == [
        "<a> dog",
        "<b> cat",
        "a red <c> toy",
    ]
    assert square_prompts("a <a> <b> dog", ["a", "b"]) == ["a <a> dog", "a <b> dog"]
