"""Text a user writes that reaches the tokenizer: prompts, negative prompts and the training template.

The base's tokenizer knows the concept slot tokens (``<|slot0|>``…); only the app writes them, when it
rewrites ``<name>``. A user's text that spells one (in any Unicode disguise the tokenizer might fold) is
refused, so no prompt can reach a slot directly. Templates are filled by plain substitution of
``{token}`` and ``{class_word}``: never ``str.format``, whose format specs (``{token: >20000000}``) and
positional fields (``{0}``) are a user-controlled mini-language.
"""

from __future__ import annotations

import re
import unicodedata

from lifelong.errors import InvalidPromptError

TOKEN_PATTERN = re.compile(r"<([a-z0-9][a-z0-9_-]{0,31})>")  # a concept as users write it: <name>
MAX_PROMPT_CHARS = 1000  # far beyond what the text encoder reads (77 tokens); bounds tokenizer work
MAX_TEMPLATE_CHARS = 200
MAX_CAPTION_CHARS = 200
_FIELDS = re.compile(r"\{(token|class_word)\}")


def _folded(text: str) -> str:
    """What a tokenizer's normaliser could turn ``text`` into: NFKC, case-folded, format characters
    (zero-width joiners, soft hyphens…) dropped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


def check_prompt(text: str, what: str = "the prompt") -> str:
    """``text`` if a user may send it to the model; else an InvalidPromptError saying why."""
    if not isinstance(text, str):
        raise InvalidPromptError(f"{what} must be text.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidPromptError(f"{what} is {len(text)} characters long; use at most {MAX_PROMPT_CHARS}.")
    folded = _folded(text)
    if "<|" in folded or "|>" in folded:
        raise InvalidPromptError(f"{what} contains a reserved '<|…|>' token; write your concepts as <name>.")
    return text


def check_template(template: str) -> str:
    """A training prompt template: ``{token}`` once or more, optionally ``{class_word}``, plain words."""
    if not isinstance(template, str) or not template.strip():
        raise InvalidPromptError("The prompt template is empty; use e.g. 'a {token} {class_word}'.")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise InvalidPromptError(
            f"The prompt template is too long; use at most {MAX_TEMPLATE_CHARS} characters."
        )
    rest = _FIELDS.sub("", template)
    if "{" in rest or "}" in rest:
        raise InvalidPromptError("The prompt template may use only {token} and {class_word} in braces.")
    if "{token}" not in template:
        raise InvalidPromptError("The prompt template must contain {token}, e.g. 'a {token} {class_word}'.")
    if any(c in rest for c in "<>|"):
        raise InvalidPromptError(
            "The prompt template cannot contain <, > or |; write the concept as {token}."
        )
    return check_prompt(template, "the prompt template")


def captioned(prompt: str, caption: str) -> str:
    """An image's training prompt: the concept's prompt, then what else the image shows."""
    return f"{prompt} {caption}".strip()


def check_captions(captions: list[str] | tuple[str, ...], images: int) -> list[str]:
    """One caption per image (or none at all): what each image shows besides the concept, plain words.

    A caption is appended to the training prompt of its image ("a {token} {class_word}" + " on a red
    background"), so the token need not explain the background or setting: without it, that part of every
    image is noise the concept's weights learn to average."""
    if not captions:
        return [""] * images
    if len(captions) != images:
        raise InvalidPromptError(
            f"{len(captions)} captions for {images} images: give one per image, or none."
        )
    cleaned = []
    for index, caption in enumerate(captions, start=1):
        what = f"caption {index}"
        if not isinstance(caption, str):
            raise InvalidPromptError(f"{what} must be text.")
        caption = " ".join(caption.split())
        if len(caption) > MAX_CAPTION_CHARS:
            raise InvalidPromptError(f"{what} is too long; use at most {MAX_CAPTION_CHARS} characters.")
        if any(c in caption for c in "<>|{}"):
            raise InvalidPromptError(
                f"{what} cannot contain <, >, |, {{ or }}: describe the rest of the image."
            )
        cleaned.append(check_prompt(caption, what))
    return cleaned


def fill_template(template: str, token: str, class_word: str) -> str:
    """The template with ``{token}`` and ``{class_word}`` replaced, whitespace collapsed."""
    values = {"token": token, "class_word": class_word}
    return " ".join(_FIELDS.sub(lambda match: values[match.group(1)], template).split())


def with_article(phrase: str) -> str:
    """``phrase`` with "a" or "an" before it ("an animal", "a dog")."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def without_concepts(prompt: str, names: set[str]) -> str:
    """``prompt`` with the concept tokens ``<name>`` of ``names`` left out (their class words stay)."""
    kept = TOKEN_PATTERN.sub(lambda match: "" if match.group(1) in names else match.group(0), prompt)
    return " ".join(kept.split())


# Words that end a concept's phrase: joiners between phrases and the prepositions that start a scene
# ("… on a blue background", "a photo of …"). A phrase is a run of other words around a concept's token.
JOINERS = ("and", "with", "beside", "next", "to", "among", "between", "against")
PREPOSITIONS = ("of", "on", "in", "at", "by", "near", "under", "over", "above", "below", "behind", "inside")
PHRASE_BREAKS = frozenset((*JOINERS, *PREPOSITIONS, "from", "into", "onto"))


def _words(prompt: str) -> list[str]:
    """The prompt's words, with commas and semicolons as words of their own."""
    return re.sub(r"([,;])", r" \1 ", prompt).split()


def square_prompts(prompt: str, names: list[str]) -> list[str]:
    """For each concept in ``names`` (each named in ``prompt`` as ``<name>``), the prompt for a square that
    draws that concept alone: the words before the first concept's phrase, that concept's phrase and the
    words after the last phrase. "a <rex> dog and a <mug> mug on a table" → "a <rex> dog on a table" and
    "a <mug> mug on a table". A phrase is the run of words around the token up to a comma, a joiner or a
    preposition (``PHRASE_BREAKS``); another concept's token inside it is left out."""
    words = _words(prompt)
    tokens = [TOKEN_PATTERN.fullmatch(word) for word in words]

    def breaks(i: int) -> bool:
        return tokens[i] is None and (words[i] in ",;" or words[i].lower() in PHRASE_BREAKS)

    spans = []
    for name in names:
        at = next(i for i, match in enumerate(tokens) if match is not None and match.group(1) == name)
        start, end = at, at + 1
        while start > 0 and not breaks(start - 1):
            start -= 1
        while end < len(words) and not breaks(end):
            end += 1
        spans.append((start, end))
    first, last = min(start for start, _ in spans), max(end for _, end in spans)
    prompts = []
    for name, (start, end) in zip(names, spans, strict=True):
        own = without_concepts(" ".join(words[start:end]), set(names) - {name})
        prompts.append(" ".join([*words[:first], own, *words[last:]]).replace(" ,", ",").replace(" ;", ";"))
    return prompts
