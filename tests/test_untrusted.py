"""A hostile visitor on a shared Space (issue 17): crafted session files and requests, to the library and to
the running app. Each must be refused with a typed error whose message names no server path, leave the
visitor's previous session as it was, write nothing outside the sessions folder, and leave the app serving
the next user normally. One base model serves every user here, as on a Space.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import socket
import struct
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import pattern_images
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_tensors

from lifelong import concepts as concepts_module
from lifelong.adapters import target_module_names
from lifelong.base import REPO_ROOT, slot_token
from lifelong.concepts import Session
from lifelong.configs import ExportConfig
from lifelong.encoding import tokenize
from lifelong.errors import (
    Cancelled,
    InvalidImageError,
    InvalidPromptError,
    InvalidSettingError,
    LifelongError,
    LimitError,
)
from lifelong.generation import GenerateConfig
from lifelong.intake import load_images
from lifelong.learner import LearnConfig
from lifelong.limits import Budget
from lifelong.lora_export import export
from lifelong.prompts import fill_template
from lifelong.service import Studio
from lifelong.signature import BaseSignature
from lifelong.ui.app import max_upload_bytes
from lifelong.ui.files import OUTPUTS

FAST = GenerateConfig(steps=2, num_images=1, seed=3)
LEARN = LearnConfig(method="finetune", steps=3, batch_size=2)
_ABSOLUTE = re.compile(r"(^|[\s(\[{'\"=:])/[A-Za-z0-9._-]")


def assert_path_free(message: str, *roots: Path) -> None:
    """No server path in what a user reads: none of the folders we know, nothing shaped like one."""
    for root in (*roots, REPO_ROOT, Path(tempfile.gettempdir())):
        assert str(root) not in message, message
    assert not _ABSOLUTE.search(message), message


# --- a valid export and ways to bend it ------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tiny_base, tmp_path_factory) -> bytes:
    """A real two-concept export (one kv, one with ICGen context), as bytes."""
    studio = Studio(tiny_base, root=tmp_path_factory.mktemp("source"))
    studio.learn("maker", pattern_images(), "rex", "dog", LEARN)
    studio.learn(
        "maker", pattern_images(seed=1), "mug", "toy", LearnConfig(method="icgen", steps=2, batch_size=2)
    )
    return studio.export("maker").read_bytes()


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {item.filename: archive.read(item) for item in archive.infolist()}


def pack(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def with_manifest(data: bytes, change) -> bytes:
    files = members(data)
    manifest = json.loads(files["manifest.json"])
    change(manifest)
    files["manifest.json"] = json.dumps(manifest).encode()
    return pack(files)


def with_checkpoint(data: bytes, change) -> bytes:
    files = members(data)
    name = "concepts/rex/checkpoint.safetensors"
    header_size = struct.unpack("<Q", files[name][:8])[0]
    metadata = json.loads(files[name][8 : 8 + header_size]).get("__metadata__", {})
    tensors = load_tensors(files[name])
    change(tensors)
    files[name] = save_tensors(tensors, metadata)
    return pack(files)


def lying_sizes(data: bytes, name: str, size: int) -> bytes:
    """The zip with ``name``'s uncompressed size in both headers replaced by ``size`` (a header that lies)."""
    raw = bytearray(data)
    encoded = name.encode()
    for signature, offset, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := raw.find(signature, start)) >= 0:
            if raw[start + name_at : start + name_at + len(encoded)] == encoded:
                raw[start + offset : start + offset + 4] = struct.pack("<I", size)
            start += 4
    return bytes(raw)


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG file that claims ``width``×``height`` pixels: what a decompression bomb looks like."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --- the victim's session, which no refused file may touch ------------------------------------------------


class Victim:
    """A studio whose user "vic" holds a session; ``refuse`` checks a crafted file changes nothing."""

    def __init__(self, base, root: Path, exported: bytes) -> None:
        self.root = root
        self.studio = Studio(base, root=root / "sessions")
        self.inbox = root / "inbox"
        self.inbox.mkdir()
        self.exported = exported
        (self.inbox / "mine.zip").write_bytes(exported)
        self.studio.import_file("vic", self.inbox / "mine.zip")
        self.tokens = self.studio.tokens("vic")
        self.manifest = self._manifest()

    def _manifest(self) -> bytes:
        return (self.studio.folder("vic") / "session" / "manifest.json").read_bytes()

    def _outside(self) -> set[Path]:
        """Every file under the test's folder but outside the sessions folder and the crafted files."""
        return {
            path
            for path in self.root.rglob("*")
            if self.studio.root not in path.parents and self.inbox not in path.parents
        }

    def refuse(self, data: bytes, *match: str) -> str:
        path = self.inbox / f"{len(list(self.inbox.iterdir()))}.zip"
        path.write_bytes(data)
        before = self._outside()
        with pytest.raises(LifelongError) as caught:
            self.studio.import_file("vic", path)
        message = str(caught.value)
        for text in match:
            assert text in message, message
        assert_path_free(message, self.root, self.studio.root)
        assert self.studio.tokens("vic") == self.tokens and self._manifest() == self.manifest
        assert sorted(p.name for p in self.studio.folder("vic").iterdir()) == ["session"]  # no staging left
        assert self._outside() == before
        return message

    def accept_or_refuse(self, data: bytes) -> None:
        """A mutation either is refused as above or imports a session that fully works."""
        path = self.inbox / f"{len(list(self.inbox.iterdir()))}.zip"
        path.write_bytes(data)
        try:
            self.studio.import_file("mut", path)
        except LifelongError as error:
            assert_path_free(str(error), self.root, self.studio.root)
            return
        session = self.studio.session("mut")
        for index in range(1, len(session.concepts) + 1):
            session.checkpoint(index)
            session.images(index)
        prompt = " ".join(["a", *self.studio.tokens("mut")])
        assert len(self.studio.generate("mut", prompt, GenerateConfig(steps=1))) == 1


@pytest.fixture
def victim(tiny_base, tmp_path, monkeypatch, exported) -> Victim:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # a stray temp file would show
    (tmp_path / "tmp").mkdir()
    return Victim(tiny_base, tmp_path, exported)


# --- crafted session files --------------------------------------------------------------------------------


def test_a_manifest_of_many_concepts_is_refused_before_any_checkpoint_is_opened(
    victim, exported, monkeypatch
):
    opened = []
    real = concepts_module.safe_open
    monkeypatch.setattr(concepts_module, "safe_open", lambda *a, **k: opened.append(a) or real(*a, **k))
    files = members(exported)
    entry = json.loads(files["manifest.json"])["concepts"][0]
    many = json.loads(files["manifest.json"])
    many["concepts"] = [{**entry, "name": f"c{i}"} for i in range(7)]  # the tiny base holds 6
    victim.refuse(pack({**files, "manifest.json": json.dumps(many).encode()}), "at most 6")
    # issue 17, case 1: 100,000 concepts sharing one checkpoint, a ~2 MB file; and 200,000 image paths
    entry = {key: entry[key] for key in ("name", "class_word", "method", "images", "checkpoint", "prompts")}
    many["concepts"] = [{**entry, "name": f"c{i}"} for i in range(100_000)]
    huge = pack({**files, "manifest.json": json.dumps(many).encode()}, zipfile.ZIP_DEFLATED)
    started = time.perf_counter()
    victim.refuse(huge, "larger than")
    many["concepts"] = [{**entry, "images": [entry["images"][0]] * 200_000}]
    victim.refuse(pack({**files, "manifest.json": json.dumps(many).encode()}, zipfile.ZIP_DEFLATED))
    assert time.perf_counter() - started < 10 and opened == []


def test_zip_bombs_and_extra_files_are_refused_from_the_headers(victim, exported):
    files = members(exported)
    gib = 1 << 30
    # issue 17, case 3: a member the manifest does not list, claiming 1 GiB (deflated zeros would be 1 MB)
    victim.refuse(lying_sizes(pack({**files, "extra.png": b"x" * 100}), "extra.png", gib), "does not list")
    victim.refuse(pack({**files, "notes.txt": b"hello"}), "does not list")
    victim.refuse(pack({**files, "../escape.png": b"x"}), "does not list")
    victim.refuse(pack({**files, "/etc/evil.png": b"x"}), "does not list")
    # a listed member larger than a checkpoint can be, seen in the header before a byte is inflated
    bomb = {**files, "concepts/rex/checkpoint.safetensors": b"\0" * (8 << 20)}
    victim.refuse(pack(bomb, zipfile.ZIP_DEFLATED), "larger than a session file can hold")
    # a header that claims less than the data holds: caught while reading
    victim.refuse(lying_sizes(exported, "concepts/rex/images/0.png", 10), "damaged")
    victim.refuse(lying_sizes(exported, "manifest.json", gib), "larger than")
    # an extra tensor inside a checkpoint, small or 1 GiB-shaped
    victim.refuse(
        with_checkpoint(exported, lambda t: t.update({"extra.evil": torch.zeros(4)})), "does not use"
    )
    victim.refuse(with_checkpoint(exported, lambda t: t.update({"junk": torch.zeros(3)})), "does not use")
    too_many = {**files, **{f"concepts/x{i}/images/0.png": b"" for i in range(200)}}
    victim.refuse(pack(too_many), "files")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["concepts"][0].update(images=[]), "between 1 and 20"),
        (lambda m: m["concepts"][0].update(seconds="slow"), "not a number"),
        (lambda m: m["concepts"][0].update(prompts=[]), "between 1 and 16"),
        (lambda m: m["concepts"][1].update(name="rex"), "twice"),
        (lambda m: m["concepts"][0].update(name=5), "is a number 5, not text"),
        (lambda m: m.update(version="1"), "version is text '1'; this app reads version 1"),
        (lambda m: m.update(version=2), "format version 2; this app reads version 1 only"),
        (lambda m: m["concepts"][0].update(images=["concepts/mug/images/0.png"]), "not its own"),
        (lambda m: m["concepts"][0].update(checkpoint="concepts/mug/checkpoint.safetensors"), "not its own"),
        (lambda m: m["concepts"][0].update(prompts=[f"a {slot_token(0)}"]), "reserved"),
        (lambda m: m["concepts"][0].update(prompts=["a <mug> dog"]), "not learned before it"),
        (lambda m: m["concepts"][0].update(settings={"a": [1]}), "plain value"),
        (lambda m: m["concepts"][0].update(evil=1), "unknown field"),
        (
            lambda m: m["concepts"][0].update(captions="on grass"),
            "captions of <rex> in the manifest are text",
        ),
        (lambda m: m["concepts"][0].update(captions=["on grass"]), "1 captions for"),
        (lambda m: m["concepts"][0].update(captions=["{x}"] * len(m["concepts"][0]["images"])), "caption 1"),
        (lambda m: m["concepts"][0].update(class_word="<|slot0|>"), "not a plain word"),
        (lambda m: m.update(concepts={"a": 1}), "not a list"),
    ],
)
def test_half_valid_manifests_are_refused_and_the_session_kept(victim, exported, change, message):
    """Issue 17, case 5 (and 10): each of these used to replace the session and fail later."""
    victim.refuse(with_manifest(exported, change), message)


def _write(victim: Victim, data: bytes) -> Path:
    path = victim.inbox / "file.zip"
    path.write_bytes(data)
    return path


def test_deep_or_broken_json_and_wrong_checkpoints_are_refused(victim, exported):
    files = members(exported)
    victim.refuse(pack({**files, "manifest.json": b"[" * 100_000}), "nested more than")
    victim.refuse(
        pack({**files, "manifest.json": b'{"format": "lifelong-session", "format": 1}'}), "repeats a key"
    )
    victim.refuse(pack({**files, "manifest.json": b"\xff\xfe"}), "not UTF-8")
    victim.refuse(pack({**files, "manifest.json": b"{" + b'"a":' * 10 + b"1"}), "not valid JSON")
    victim.refuse(pack({"manifest.json": b"{}"}), "not a Lifelong Studio session")
    victim.refuse(b"plain text", "not a zip file")
    wrong = {key: torch.zeros(3) for key in ("embedding",)}
    victim.refuse(with_checkpoint(exported, lambda t: t.update(wrong)), "has shape 3 where")
    victim.refuse(
        with_checkpoint(exported, lambda t: t.update(embedding=t["embedding"].double())), "not float32"
    )
    victim.refuse(
        with_checkpoint(exported, lambda t: t.update(embedding=t["embedding"] * math.nan)), "not finite"
    )
    victim.refuse(with_checkpoint(exported, lambda t: t.pop("embedding")), "lacks")
    png = {**files, "concepts/rex/images/0.png": png_header(19_900, 19_900)}
    victim.refuse(pack(png), "not a 16×16 px PNG")
    victim.refuse(pack({**files, "concepts/rex/checkpoint.safetensors": b"\0" * 16}), "not a readable")


def test_checkpoints_on_any_attention_projection_import_and_others_are_refused(victim, tiny_base, tmp_path):
    """Concepts may change any attention projection of the base (the "lora-attn" superset of K/V), dense or
    as LoRA factors of rank up to 64; weights anywhere else, or of a larger rank, are refused."""
    maker = Studio(tiny_base, root=tmp_path / "maker")
    maker.learn(
        "m", pattern_images(), "rex", "dog", LearnConfig(method="finetune", params="lora-attn", steps=2)
    )
    lora_attn = maker.export("m").read_bytes()
    attention = target_module_names(tiny_base.pipe.unet, "lora-attn")
    assert set(attention) > set(target_module_names(tiny_base.pipe.unet, "kv"))
    key_a = f"delta.{attention[0]}.lora_A"
    assert key_a in load_tensors(members(lora_attn)["concepts/rex/checkpoint.safetensors"])
    q_proj = next(name for name in attention if name.endswith("attn1.to_q"))
    out, inp = tiny_base.pipe.unet.get_submodule(q_proj).weight.shape
    dense_q = with_checkpoint(victim.exported, lambda t: t.update({f"delta.{q_proj}": torch.zeros(out, inp)}))
    for index, data in enumerate([lora_attn, dense_q]):
        path = tmp_path / f"ok{index}.zip"
        path.write_bytes(data)
        victim.studio.import_file(f"ok{index}", path)
        prompt = " ".join(["a", *victim.studio.tokens(f"ok{index}")])
        assert len(victim.studio.generate(f"ok{index}", prompt, FAST)) == 1
    conv = tiny_base.pipe.unet.conv_in.weight.shape
    victim.refuse(
        with_checkpoint(victim.exported, lambda t: t.update({"delta.conv_in": torch.zeros(conv)})),
        "does not use",
    )

    def rank_65(tensors):
        tensors[key_a] = torch.zeros(65, tensors[key_a].shape[1])

    victim.refuse(with_checkpoint(lora_attn, rank_65), "has shape 65×")


# --- LoRA and embedding files made elsewhere (issue 18's import) -------------------------------------------


def test_crafted_lora_and_embedding_files_are_refused_and_the_session_kept(victim, tiny_base, tmp_path):
    """A LoRA + embedding pair is a stranger's upload too: checked from the headers against the base, refused
    whole with a typed, path-free message, the session as it was."""
    good = export(tiny_base, victim.studio.session("vic"), tmp_path / "good", ExportConfig(concept="rex"))
    lora, embedding = good.folder / good.files[0], good.folder / "embeddings" / "rex.safetensors"
    weights = load_file(lora)
    down = next(key for key in weights if key.endswith(".lora.down.weight"))
    up, module = down.replace(".down.", ".up."), down.removesuffix(".lora.down.weight")
    out, inp = weights[up].shape[0], weights[down].shape[1]
    kohya = "lora_unet_" + module.removeprefix("unet.").replace(".", "_")
    concepts = sorted(p.name for p in (victim.studio.folder("vic") / "session" / "concepts").iterdir())

    def saved(tensors: dict[str, torch.Tensor]) -> Path:
        path = victim.inbox / f"{len(list(victim.inbox.iterdir()))}.safetensors"
        save_file(tensors, str(path))
        return path

    def refuse(lora_file: Path, embedding_file: Path, match: str, name: str = "new") -> None:
        with pytest.raises(LifelongError) as caught:
            victim.studio.import_lora("vic", lora_file, embedding_file, name)
        assert match in str(caught.value), str(caught.value)
        assert_path_free(str(caught.value), victim.root, victim.studio.root)
        assert victim.studio.tokens("vic") == victim.tokens and victim._manifest() == victim.manifest
        assert (
            sorted(p.name for p in (victim.studio.folder("vic") / "session" / "concepts").iterdir())
            == concepts
        )

    refuse(saved({**weights, down: weights[down] * math.nan}), embedding, "not finite")
    refuse(saved({**weights, down: torch.zeros(65, inp), up: torch.zeros(out, 65)}), embedding, "above 64")
    refuse(saved({k: v for k, v in weights.items() if k != up}), embedding, "only one of the two")
    refuse(saved({**weights, f"{kohya}.lora_down.weight": weights[down].clone()}), embedding, "twice")
    refuse(saved({**weights, "unet.conv_in.lora.down.weight": torch.zeros(2, 4)}), embedding, "has not")
    refuse(saved({**weights, f"{kohya}.alpha": torch.zeros(3)}), embedding, "not one number")
    liar = victim.inbox / "liar.safetensors"
    liar.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    refuse(liar, embedding, "not a safetensors file")
    huge = victim.inbox / "huge.safetensors"
    with open(huge, "wb") as handle:  # sparse: its size is what counts, read before anything else
        handle.truncate(BaseSignature.of(tiny_base).max_checkpoint_bytes() + 1)
    refuse(huge, embedding, "can be at most")
    width = BaseSignature.of(tiny_base).embedding_width
    refuse(lora, saved({"<a>": torch.zeros(width), "<b>": torch.zeros(width)}), "holds 2 tensors")
    refuse(lora, saved({"<a>": torch.zeros(width, dtype=torch.int64)}), "I64")
    refuse(lora, saved({"<a>": torch.full((width,), math.inf)}), "not finite")
    refuse(lora, saved({"<|slot0|>": torch.zeros(width)}), "Give the concept a name", name="")
    refuse(lora, embedding, "cannot be a concept name", name="../x")
    refuse(lora, embedding, "already in this session", name="rex")


def test_random_mutations_of_a_valid_export_are_refused_or_work(victim, exported):
    rng = random.Random(17)
    for cut in sorted(rng.sample(range(1, len(exported)), 12)):
        victim.refuse(exported[:cut])
    for _ in range(20):
        data = bytearray(exported)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        victim.accept_or_refuse(bytes(data))
    values = [None, 0, -1, 1e308, "x", "", [], {}, True, [["deep"]], "a" * 5000]
    manifest = json.loads(members(exported)["manifest.json"])
    paths = [(key,) for key in manifest] + [("concepts", 0, key) for key in manifest["concepts"][0]]
    for path in paths:
        for value in rng.sample(values, 2):

            def retype(m, path=path, value=value):
                target = m
                for step in path[:-1]:
                    target = target[step]
                target[path[-1]] = value

            victim.accept_or_refuse(with_manifest(exported, retype))
    assert victim.studio.tokens("vic") == victim.tokens == ["<rex>", "<mug>"]
    assert len(victim.studio.generate("next-user", "a red dog", FAST)) == 1


def test_a_valid_import_replaces_the_session_atomically_and_stores_no_server_path(victim, exported, tmp_path):
    files = {name: data for name, data in members(exported).items() if "/mug/" not in name}
    manifest = json.loads(files["manifest.json"])
    manifest["concepts"].pop()
    victim.studio.import_file(
        "vic", _write(victim, pack({**files, "manifest.json": json.dumps(manifest).encode()}))
    )
    assert victim.studio.tokens("vic") == ["<rex>"]
    # a crash between the two renames of the swap: the next look at the session finishes or undoes it
    folder = victim.studio.folder("vic")
    (folder / "session").rename(folder / ".replaced")
    victim.studio._sessions.clear()
    assert victim.studio.tokens("vic") == ["<rex>"]
    # exports name the model as others know it, never by its path on this server
    session = Session.create(tmp_path / "local", str(tmp_path / "models" / "my-model"))
    manifest = json.loads(members(session.export(tmp_path / "out.zip").read_bytes())["manifest.json"])
    assert manifest["base_model"] == "my-model"
    assert_path_free(json.dumps(manifest), tmp_path)


# --- two users on one base ------------------------------------------------------------------------------


def test_no_concept_of_one_user_reaches_another_by_any_prompt(tiny_base, tmp_path):
    studio = Studio(tiny_base, root=tmp_path)
    table = tiny_base.pipe.text_encoder.get_input_embeddings().weight
    slots = tiny_base.slot_token_ids
    before = np.asarray(studio.generate("bob", "a red dog", FAST)[0])
    studio.learn(
        "alice", pattern_images(), "secret", "dog", LearnConfig(method="finetune", steps=10, batch_size=2)
    )
    studio.generate("alice", "a <secret> dog", FAST)
    assert torch.equal(table[slots], tiny_base.pristine_rows)  # what alice's job wrote is gone
    assert np.array_equal(np.asarray(studio.generate("bob", "a red dog", FAST)[0]), before)
    disguises = [
        slot_token(0),
        f"a {slot_token(0)} dog",
        "a <|SLOT0|> dog",
        "a ＜｜slot0｜＞ dog",  # fullwidth forms fold to the ASCII ones (NFKC)
        "a <\u200b|slot0|> dog",  # a zero-width space inside
        "<|slot0",
        "slot0|>",
        "<|startoftext|>",
    ]
    for prompt in disguises:
        for field in ("prompt", "negative"):
            with pytest.raises(InvalidPromptError, match="reserved"):
                if field == "prompt":
                    studio.generate("bob", prompt, FAST)
                else:
                    studio.generate("bob", "a dog", GenerateConfig(steps=1, negative_prompt=prompt))
        with pytest.raises(InvalidPromptError):
            studio.learn("bob", pattern_images(), "x", "", LearnConfig(prompt_template=f"{{token}} {prompt}"))
    for prompt in ("a <secret> dog", "<secret>"):
        with pytest.raises(InvalidPromptError, match="not a learned concept"):
            studio.generate("bob", prompt, FAST)
    # whatever bob may send that is accepted, the tokenizer never sees a slot in it
    for prompt in ("a slot0 dog", "a slot 0 dog", "a | dog", "< | >"):
        ids = tokenize(tiny_base, [studio.session("bob").rewrite_prompt(prompt, 0)])
        assert not set(ids.flatten().tolist()) & set(slots)
    assert torch.equal(table[slots], tiny_base.pristine_rows)


# --- crafted requests to the library -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (LearnConfig(batch_size=0), "batch_size=0 is out of range"),
        (LearnConfig(batch_size=512, steps=2000), "batch_size=512 is out of range"),
        (LearnConfig(gradient_accumulation=100), "gradient_accumulation=100"),
        (LearnConfig(steps=0), "steps=0"),
        (LearnConfig(learning_rate=math.nan), "learning_rate=nan"),
        (LearnConfig(seed=-1), "seed=-1"),
        (LearnConfig(seed=2**70), "seed="),
        (LearnConfig(lora_rank=0), "lora_rank=0"),
        (LearnConfig(params="pickle"), "params must be"),
        (LearnConfig(prompt_template="{token: >20000000}"), "only {token} and {class_word}"),
        (LearnConfig(prompt_template="{0} {token}"), "only {token} and {class_word}"),
        (LearnConfig(prompt_template="a photo"), "must contain {token}"),
        (LearnConfig(prompt_template="{token} <rex>"), "cannot contain <"),
        (LearnConfig(steps=2000, batch_size=64), "this app allows at most 900 s"),
    ],
)
def test_learn_requests_out_of_bounds_are_refused_before_anything_runs(tiny_base, tmp_path, config, message):
    studio = Studio(tiny_base, root=tmp_path, budget=Budget(900))
    with pytest.raises(LifelongError) as caught:
        studio.learn("u", pattern_images(), "rex", "dog", config)
    assert message in str(caught.value)
    assert_path_free(str(caught.value), tmp_path)
    assert studio.tokens("u") == []


@pytest.mark.parametrize(
    ("name", "class_word"), [(5, "dog"), ("rex", ["dog"]), ("../x", "dog"), ("rex", "{0}")]
)
def test_names_and_class_words_of_the_wrong_kind_are_refused(tiny_base, tmp_path, name, class_word):
    with pytest.raises(LifelongError) as caught:
        Studio(tiny_base, root=tmp_path).learn("u", pattern_images(), name, class_word, LEARN)
    assert_path_free(str(caught.value), tmp_path)


def test_templates_are_filled_by_plain_substitution():
    assert fill_template("a {token}  {class_word} in {token}", "<x>", "dog") == "a <x> dog in <x>"
    assert fill_template("{token} {class_word}", "<x>", "{token}") == "<x> {token}"  # one pass only


@pytest.mark.parametrize(
    ("prompt", "config", "error"),
    [
        ("a dog", GenerateConfig(steps=0), LimitError),
        ("a dog", GenerateConfig(num_images=1000), LimitError),  # the budget speaks first
        ("a dog", GenerateConfig(guidance_scale=math.inf), LimitError),
        ("a dog", GenerateConfig(seed=2**70), LimitError),
        ("a dog", GenerateConfig(icgen_strength=0.5, icgen_context="²"), InvalidSettingError),
        ("a dog", GenerateConfig(attention_steps=10**9), LimitError),
        ("a dog " * 400, FAST, InvalidPromptError),
        (5, FAST, InvalidPromptError),
        ("a dog", GenerateConfig(steps=200, num_images=16), LimitError),  # over a 300 s budget
    ],
)
def test_generate_requests_out_of_bounds_are_refused(tiny_base, tmp_path, prompt, config, error):
    studio = Studio(tiny_base, root=tmp_path, budget=Budget(300))
    with pytest.raises(error) as caught:
        studio.generate("u", prompt, config)
    assert_path_free(str(caught.value), tmp_path)


def test_images_too_large_are_refused_from_their_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(19_900, 19_900))  # 396 megapixels in a few bytes
    big = tmp_path / "big.png"
    big.write_bytes(png_header(12_000, 9_000))  # 108 MP: over our limit, under Pillow's error threshold
    for path in (bomb, big):
        with pytest.raises(InvalidImageError, match="resize it below 100 megapixels") as caught:
            load_images([str(path)], 16)
        assert str(path.parent) not in str(caught.value)
    assert Image.MAX_IMAGE_PIXELS == 100_000_000


def test_forgetting_is_bounded_reports_progress_and_cancels_queued_or_running(tiny_base, tmp_path):
    studio = Studio(tiny_base, root=tmp_path, budget=Budget(60))
    for name, seed in (("rex", 0), ("mug", 1)):
        studio.learn("u", pattern_images(seed=seed), name, "toy", LEARN)
    with pytest.raises(LimitError, match="Comparing 2 image set"):
        studio.forgetting("u", GenerateConfig(steps=200, num_images=2))
    seen = []
    studio.forgetting("u", FAST, lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]

    def cancel_after_one(done, total):
        if done == 1:
            studio.cancel("u")

    with pytest.raises(Cancelled, match="after 1 of 2 image sets"):
        studio.forgetting("u", FAST, cancel_after_one)
    # issue 17, case 8: a cancel clicked while the job still waits in the queue is not lost...
    studio.submit("u", "forgetting")
    studio.cancel("u")
    with pytest.raises(Cancelled, match="after 0 of 2"):
        studio.forgetting("u", FAST)
    studio.submit("u", "learn")
    studio.cancel("u")
    with pytest.raises(Cancelled, match="at step 0"):
        studio.learn("u", pattern_images(seed=4), "late", "toy", LEARN)
    # ...and one clicked while nothing ran never stops a later job
    studio.cancel("u")
    time.sleep(0.01)
    studio.submit("u", "learn")
    studio.learn("u", pattern_images(seed=4), "late", "toy", LEARN)
    assert studio.tokens("u") == ["<rex>", "<mug>", "<late>"]


# --- crafted requests to the running app ------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tiny_base, tmp_path_factory):
    import sys

    sys.path.insert(0, str(REPO_ROOT))
    from app import create_app

    studio = Studio(tiny_base, root=tmp_path_factory.mktemp("app-sessions"), budget=Budget(400))
    demo = create_app(studio)
    limit = max_upload_bytes(tiny_base)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_port=port, max_file_size=limit)
    yield url, studio, demo, limit
    demo.close()


def call(client: Client, api: str, **by_label):
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"][api]
    args = [by_label.get(p["label"], p.get("parameter_default")) for p in endpoint["parameters"]]
    return client.predict(*args, api_name=api)


def other_base_lora(base, folder: Path) -> dict[str, object]:
    """/import_lora's inputs: a LoRA whose factors fit another base's layer, and a fitting embedding."""
    module = target_module_names(base.pipe.unet)[0]
    out, inp = base.pipe.unet.get_submodule(module).weight.shape
    lora, embedding = folder / "other.safetensors", folder / "token.safetensors"
    save_file(
        {
            f"unet.{module}.lora_A.weight": torch.zeros(2, 2 * inp),
            f"unet.{module}.lora_B.weight": torch.zeros(out, 2),
        },
        str(lora),
    )
    save_file({"<x>": torch.zeros(BaseSignature.of(base).embedding_width)}, str(embedding))
    return {
        "LoRA file (.safetensors)": handle_file(lora),
        "Embedding file (.safetensors)": handle_file(embedding),
    }


def test_the_app_refuses_crafted_requests_and_serves_the_next_user(app, exported, tmp_path):
    url, studio, demo, limit = app
    client = Client(url, verbose=False)
    images = [str(tmp_path / f"{i}.png") for i in range(3)]
    for image, path in zip(pattern_images(size=32), images, strict=True):
        image.save(path)
    learn = {
        "3–5 images of your concept (drop them here)": [{"image": handle_file(p)} for p in images],
        "Concept name": "rex",
        "Steps": 2,
        "Batch size": 2,
    }
    call(client, "/learn", **learn)
    bad_file = tmp_path / "bad.zip"
    bad_file.write_bytes(with_manifest(exported, lambda m: m["concepts"][0].update(seconds="slow")))
    crafted = [
        ("/generate", {"Prompt": f"a {slot_token(0)} dog", "Steps": 1}, "reserved"),
        ("/generate", {"Prompt": "a dog", "Negative prompt": "<|slot0|>", "Steps": 1}, "reserved"),
        ("/generate", {"Prompt": "a dog", "Steps": 200, "Num images": 16}, "this app allows at most 400 s"),
        ("/learn", {**learn, "Concept name": "b", "Batch size": 0}, "batch_size=0 is out of range"),
        ("/learn", {**learn, "Concept name": "b", "Prompt template": "{0}"}, "only {token}"),
        ("/learn", {**learn, "Concept name": "b", "Steps": 2000, "Batch size": 64}, "at most 400 s"),
        ("/import", {"Import session file": handle_file(bad_file)}, "not a number"),
        ("/import_lora", other_base_lora(studio.base, tmp_path), "made for another base model"),
    ]
    for api, values, message in crafted:
        with pytest.raises(AppError) as caught:
            call(client, api, **values)
        assert message in str(caught.value)
        assert_path_free(str(caught.value), tmp_path, studio.root)
        assert "Something went wrong" not in str(caught.value)
    timeline, _, _ = call(client, "/session")
    assert [item["caption"].split(" · ")[0] for item in timeline] == ["1. <rex>"]
    # the upload limit is set: one byte over it is refused by Gradio before any handler runs
    response = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.zip", b"\0" * (limit + 1))})
    assert response.status_code == 413
    # the next visitor is served normally
    other = Client(url, verbose=False)
    out, _ = call(other, "/generate", Prompt="a red dog", Steps=2, **{"Num images": 1})
    assert np.asarray(Image.open(out[0]["image"])).std() > 0


def test_a_session_leaves_nothing_in_gradios_cache_when_it_ends(app, tmp_path):
    url, studio, demo, _ = app
    import gradio as gr

    cache = Path(gr.utils.get_upload_folder())
    client = Client(url, verbose=False)
    path = tmp_path / "mine.png"
    pattern_images(size=40, seed=9)[0].save(path)
    learn = {
        "3–5 images of your concept (drop them here)": [{"image": handle_file(str(path))}],
        "Concept name": "gone",
        "Steps": 2,
        "Batch size": 2,
    }
    call(client, "/learn", **learn)
    call(client, "/generate", Prompt="a <gone>", Steps=2, **{"Num images": 1})
    call(client, "/export")
    user = next(folder.name for folder in studio.root.iterdir() if studio.tokens(folder.name) == ["<gone>"])
    outputs = cache / OUTPUTS / user  # images, thumbnails and the export, served from here
    assert {p.suffix for p in outputs.rglob("*") if p.is_file()} == {".png", ".zip"}
    uploaded = [p for p in cache.rglob("mine.png") if OUTPUTS not in p.parts]
    assert uploaded
    [unload] = [fn for fn in demo.fns.values() if any(t[1] == "unload" for t in fn.targets)]
    unload.fn(gr.Request(session_hash=user))
    assert not outputs.exists() and not any(p.exists() for p in uploaded)
    assert not studio.folder(user).exists()
