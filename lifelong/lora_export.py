"""Export concepts in the formats the ecosystem loads: a LoRA plus one textual-inversion file per token.

- ``diffusers``: a folder that ``StableDiffusionPipeline.load_lora_weights(folder)`` loads (written by
  diffusers' own ``save_lora_weights`` from a peft-keyed state dict, as its DreamBooth-LoRA script does),
  and ``embeddings/<name>.safetensors`` holding ``{"<name>": vector}`` for ``load_textual_inversion``;
- ``kohya``: one ``.safetensors`` with kohya's key naming (``lora_unet_…​.lora_down.weight``, ``.alpha``;
  diffusers' ``convert_state_dict_to_kohya``), which A1111 and ComfyUI read, and A1111 embeddings
  (``{"emb_params": vectors}``; A1111 names an embedding by its file's name).

Either way a README.md says which base the concepts were learned on, their tokens, the method, the SVD's
rank and error, and how to load them. The tokens are the ones users type (``<rex>``), never the session's
slot tokens. The folder is written aside and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya

from lifelong.base import BaseModel, public_model_name
from lifelong.concepts import Concept, Session
from lifelong.configs import ExportConfig, check
from lifelong.errors import ExportError
from lifelong.files import write_safetensors
from lifelong.lowrank import Factors, to_factors

DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"  # the name load_lora_weights(folder) looks for
EMBEDDINGS = "embeddings"
README = "README.md"


@dataclass
class ExportReport:
    """What an export wrote and what the SVD of dense deltas cost."""

    folder: Path
    files: list[str]  # relative to ``folder``
    tokens: list[str]
    ranks: dict[str, int]  # per module, the LoRA rank written
    svd_ranks: dict[str, int] = field(default_factory=dict)  # modules whose dense delta was truncated
    relative_error: float = 0.0  # ‖ΔW − B @ A‖_F / ‖ΔW‖_F over all modules

    def summary(self) -> str:
        ranks = sorted(set(self.ranks.values()))
        text = f"{', '.join(self.tokens)}: LoRA on {len(self.ranks)} layers, rank {_span(ranks)}"
        if self.svd_ranks:
            svd = sorted(set(self.svd_ranks.values()))
            text += f"; dense deltas by SVD at rank {_span(svd)}, relative error {self.relative_error:.4f}"
        return text + "."


def _span(values: list[int]) -> str:
    if not values:
        return "0"
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def chosen_concepts(session: Session, config: ExportConfig, checkpoint: int | None) -> list[int]:
    """1-based indices of the concepts to export: ``config.concept`` alone, or all up to ``checkpoint``."""
    if config.concept and checkpoint is not None:
        raise ExportError(
            "Give a concept or a checkpoint, not both: a concept exports alone, a checkpoint every concept "
            "up to it."
        )
    if config.concept:
        if config.concept not in session.names():
            known = ", ".join(f"<{name}>" for name in session.names()) or "none yet"
            raise ExportError(f"<{config.concept}> is not a concept of this session (it has: {known}).")
        return [session.names().index(config.concept) + 1]
    k = session.resolve(checkpoint)
    if k == 0:
        raise ExportError("Checkpoint 0 is the base model: learn a concept before exporting.")
    routed = [c.token for c in session.concepts[:k] if not c.stacked]
    if k > 1 and routed:
        raise ExportError(
            f"{routed[0]} is routed: the session mixes it in only for prompts that name it, which one LoRA "
            "file cannot do. Export each concept on its own instead."
        )
    return list(range(1, k + 1))


def export(
    base: BaseModel,
    session: Session,
    out: str | Path,
    config: ExportConfig | None = None,
    checkpoint: int | None = None,
) -> ExportReport:
    """Write the chosen concepts (``config.concept``, else the state at ``checkpoint``, None = latest) as a
    LoRA and textual-inversion embeddings into the new folder ``out``."""
    config = config or ExportConfig()
    check(config)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError("The export folder already holds files; export into a new folder.")
    indices = chosen_concepts(session, config, checkpoint)
    concepts = [session.concepts[i - 1] for i in indices]
    factors = to_factors([session.checkpoint(i)[0] for i in indices], config.energy, config.max_rank)
    embeddings = {c.name: session.checkpoint(i)[0].embedding for i, c in zip(indices, concepts, strict=True)}
    stem = concepts[0].name if config.concept else f"lifelong-checkpoint-{indices[-1]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if config.format == "diffusers":
            files = write_diffusers(staging, factors, embeddings)
        else:
            files = write_kohya(staging, stem, factors, embeddings, public_model_name(base.name))
        report = ExportReport(
            out,
            [*files, README],
            [c.token for c in concepts],
            factors.ranks(),
            factors.svd_ranks,
            factors.relative_error,
        )
        (staging / README).write_text(readme(base, session, indices, config, report))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def peft_state_dict(factors: Factors) -> dict[str, torch.Tensor]:
    """The factors keyed as peft's ``get_peft_model_state_dict`` keys a UNet's LoRA."""
    state = {}
    for module, (a, b) in factors.factors.items():
        state[f"{module}.lora_A.weight"] = a.contiguous()
        state[f"{module}.lora_B.weight"] = b.contiguous()
    return state


def write_diffusers(folder: Path, factors: Factors, embeddings: dict[str, torch.Tensor]) -> list[str]:
    """diffusers' LoRA file and one ``{"<name>": vector}`` embedding per name; the files written."""
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(peft_state_dict(factors))
    )
    files = [DIFFUSERS_LORA]
    for name, vector in embeddings.items():
        relative = f"{EMBEDDINGS}/{name}.safetensors"
        write_safetensors(folder / relative, {f"<{name}>": vector[None].float()}, {"format": "pt"})
        files.append(relative)
    return files


def kohya_state_dict(factors: Factors) -> dict[str, torch.Tensor]:
    """The factors under kohya's names (diffusers' own conversion), alpha = rank: ΔW = B @ A exactly."""
    return convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state_dict(factors).items()})


def write_kohya(
    folder: Path, stem: str, factors: Factors, embeddings: dict[str, torch.Tensor], base_name: str
) -> list[str]:
    """One kohya-keyed LoRA file ``<stem>.safetensors`` and A1111 embeddings; the files written."""
    # A1111 shows ss_* metadata in its LoRA browser; sd_v1 tells it which architecture this is
    metadata = {"format": "pt", "ss_base_model_version": "sd_v1", "ss_sd_model_name": base_name}
    lora = f"{stem}.safetensors"
    write_safetensors(folder / lora, kohya_state_dict(factors), metadata)
    files = [lora]
    for name, vector in embeddings.items():
        relative = f"{EMBEDDINGS}/{name}.safetensors"
        write_safetensors(folder / relative, {"emb_params": vector[None].float()}, {"format": "pt"})
        files.append(relative)
    return files


def _method_line(session: Session, index: int) -> str:
    concept = session.concepts[index - 1]
    kind = session.checkpoint(index)[0].kind
    how = (
        "dense K/V increments, written as LoRA by a truncated SVD"
        if kind == "kv"
        else "LoRA, written exactly"
    )
    return f"- `{concept.token}` ({concept.class_word or 'no class word'}): method {concept.method}, {how}"


def readme(
    base: BaseModel, session: Session, indices: list[int], config: ExportConfig, report: ExportReport
) -> str:
    """The export's README: base, tokens, method, rank and error, and how to load it."""
    concepts = [session.concepts[i - 1] for i in indices]
    base_name = public_model_name(base.name)
    what = (
        f"the concept {concepts[0].token} alone"
        if config.concept
        else f"checkpoint {indices[-1]} of a session: every concept up to it, as the session composes them"
    )
    lines = [
        f"# {', '.join(c.token for c in concepts)}, learned with Lifelong Studio",
        "",
        f"Base model: {f'`{base_name}`' if base_name else 'one built in memory, without a name'} (learned on "
        "it; it loads only on a base with the same architecture).",
        f"What: {what}.",
        *[_method_line(session, i) for i in indices],
        "",
        f"LoRA: {report.summary()}",
    ]
    if report.svd_ranks:
        lines.append(
            f"The SVD keeps {config.energy:.1%} of each dense delta's energy (Σσ², rank at most "
            f"{config.max_rank}); the error is ‖ΔW − B·A‖ / ‖ΔW‖ over all layers."
        )
    earlier = [c.token for c in session.concepts[: indices[0] - 1] if c.stacked]
    if config.concept and earlier:
        lines.append(
            f"It was learned on top of {', '.join(earlier)}: alone it may draw a little differently than in "
            f"the session; export checkpoint {indices[0]} for the session's exact state."
        )
    sampler = type(base.sampling_scheduler()).__name__
    lines += ["", *_loading(base_name, concepts, config, report, sampler)]
    return "\n".join(lines) + "\n"


def _loading(
    base_name: str, concepts: list[Concept], config: ExportConfig, report: ExportReport, sampler: str
) -> list[str]:
    prompt = f"a {concepts[0].token} {concepts[0].class_word}".strip()
    if config.format == "kohya":
        names = ", ".join(f"`{c.name}`" for c in concepts)
        lora = Path(report.files[0]).stem
        return [
            "## A1111 and ComfyUI",
            "",
            f"Copy `{report.files[0]}` into `models/Lora` and the files of `{EMBEDDINGS}/` into `embeddings`.",
            f"An A1111 embedding is named by its file: write {names} in prompts (ComfyUI: `embedding:name`),",
            f"and add `<lora:{lora}:1>` (ComfyUI: a LoraLoader node). The weight 1 is what the session used;",
            f"the session samples with {sampler}.",
        ]
    folder = report.folder.name
    loads = [f'pipe.load_textual_inversion("{folder}/{EMBEDDINGS}/{c.name}.safetensors")' for c in concepts]
    return [
        "## diffusers",
        "",
        "```py",
        "from diffusers import StableDiffusionPipeline",
        "",
        f'pipe = StableDiffusionPipeline.from_pretrained("{base_name or "the/same/base"}")',
        f'pipe.load_lora_weights("{folder}")  # this folder',
        *loads,
        f'image = pipe("{prompt}").images[0]',
        "```",
        "",
        f"The session samples with {sampler} (the same seed gives the same image with it).",
    ]
