"""Command line: ``python -m lifelong learn|generate|export|import-lora|info|methods``, with tqdm progress."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import get_type_hints

from tqdm import tqdm

from lifelong.base import BaseConfig, BaseModel, compile_requested, default_model, get_base
from lifelong.concepts import Session
from lifelong.configs import ExportConfig
from lifelong.errors import LifelongError
from lifelong.folders import captions_of
from lifelong.generation import GenerateConfig, generate, generate_with_maps
from lifelong.learner import LearnConfig, learn
from lifelong.lora_export import export
from lifelong.lora_import import import_lora
from lifelong.methods import describe
from lifelong.overrides import override, parse_pairs
from lifelong.progress import Progress


def _base(args: argparse.Namespace, session: Session | None = None) -> BaseModel:
    """--model, else the model the session was learned on ("" = the default model)."""
    model = args.model or (session.base_model if session else "")
    # one command makes few images: a compile would cost more than it saves unless asked for
    return get_base(BaseConfig(model=model, device=args.device, compile=compile_requested()))


LEARN_OPTIONS = ("method", "steps")
GENERATE_OPTIONS = (
    "negative_prompt",
    "num_images",
    "steps",
    "guidance_scale",
    "seed",
    "icgen_strength",
    "icgen_context",
)
EXPORT_OPTIONS = ("format", "concept", "energy", "max_rank")


def config_options(parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...]) -> None:
    """One option per config field, its type, default and help read from the field (``lifelong.configs``);
    left out, the field keeps its default. ``--set key=value`` reaches every other field."""
    hints = get_type_hints(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    for name in names:
        item = fields[name]
        flag = item.metadata.get("flag") or "--" + name.replace("_", "-")
        default = item.default
        parser.add_argument(
            flag,
            dest=name,
            type=hints[name],
            default=None,
            help=f"{item.metadata['help']} (default {default})",
        )


def chosen(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, object]:
    """The config options given on the command line, then the ``--set`` pairs."""
    values: dict[str, object] = {
        name: getattr(args, name) for name in names if getattr(args, name) is not None
    }
    values.update(parse_pairs(args.set))
    return values


def _learn(args: argparse.Namespace) -> None:
    session = Session.create(args.session, args.model)
    base = _base(args, session)
    config = override(LearnConfig(), chosen(args, LEARN_OPTIONS))
    with tqdm(total=config.steps, desc=f"learning <{args.name}>", unit="step") as bar:

        def show(progress: Progress) -> None:
            bar.update(progress.step - bar.n)
            bar.set_postfix(loss=f"{progress.loss:.4f}")

        captions = captions_of([Path(image) for image in args.images])  # kohya's 0.txt beside 0.png
        result = learn(
            base, session, args.images, args.name, args.class_word, config, show, captions=captions
        )
    concept = result.concept
    print(
        f"learned {concept.token} with {concept.method} in {concept.seconds:.1f} s as checkpoint {len(session.concepts)}"
    )


def _generate(args: argparse.Namespace) -> None:
    session = Session.open(args.session) if args.session else None
    base = _base(args, session)
    config = override(GenerateConfig(), chosen(args, GENERATE_OPTIONS))
    session = session or Session(Path(args.out), args.model, [])  # no concepts: the base model alone
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=config.steps, desc="generating", unit="step") as bar:

        def show(progress: Progress) -> None:
            bar.update(progress.step - bar.n)

        if args.maps:
            images, overlays, _ = generate_with_maps(
                base, session, args.prompt, config, args.checkpoint, show
            )
        else:
            images, overlays = generate(base, session, args.prompt, config, args.checkpoint, show), []
    for index, image in enumerate(images):
        path = out / f"{config.seed + index:06d}.png"
        image.save(path)
        print(path)
    for index, (overlay, caption) in enumerate(overlays):
        path = out / f"attention-{index:02d}.png"
        overlay.save(path)
        print(f"{path}  ({caption})")


def _export(args: argparse.Namespace) -> None:
    session = Session.open(args.session)
    base = _base(args, session)
    config = override(ExportConfig(), chosen(args, EXPORT_OPTIONS))
    report = export(base, session, args.out, config, args.checkpoint)
    print(report.summary())
    for relative in report.files:
        print(args.out / relative)


def _import_lora(args: argparse.Namespace) -> None:
    session = Session.create(args.session, args.model)
    base = _base(args, session)
    concept = import_lora(base, session, args.lora, args.embedding, args.name, args.class_word)
    print(f"imported {concept.token} ({concept.settings['source']}) as checkpoint {len(session.concepts)}")


def _info(args: argparse.Namespace) -> None:
    session = Session.open(args.session)
    print(f"session {session.root}  base model: {session.base_model or f'default ({default_model()})'}")
    print("checkpoint 0: the base model")
    for index, concept in enumerate(session.concepts, start=1):
        print(
            f"checkpoint {index}: {concept.token} ({concept.class_word or 'no class word'}) method={concept.method} "
            f"images={len(concept.images)} steps={concept.settings.get('steps')} {concept.seconds:.1f} s "
            f"final loss {concept.final_loss:.4f}"
        )


def _methods(args: argparse.Namespace) -> None:
    print(describe())


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="", help="hub id or folder of an SD-1.x pipeline (default: the bundled model)"
    )
    parser.add_argument("--device", default="", help="cpu, cuda, ... (default: what accelerate finds)")


def _set_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=what)


def _learn_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("learn", help="learn a concept from 1-20 images (3-5 recommended)")
    parser.add_argument("--session", required=True, type=Path)
    parser.add_argument("--name", required=True, help="concept name; prompts use it as <name>")
    parser.add_argument("--class-word", default="", help="what it is, e.g. dog")
    config_options(parser, LearnConfig, LEARN_OPTIONS)
    _set_option(parser, "a LearnConfig field or method setting")
    parser.add_argument("images", nargs="+")
    _common(parser)
    parser.set_defaults(run=_learn)


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="generate images at a checkpoint")
    parser.add_argument("--session", type=Path, default=None, help="omit to use the base model alone")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--checkpoint", type=int, default=None, help="0 = base; default: the latest")
    config_options(parser, GenerateConfig, GENERATE_OPTIONS)
    _set_option(parser, "any GenerateConfig field, e.g. caa=false")
    parser.add_argument(
        "--maps", action="store_true", help="also save where each word attends (attention maps)"
    )
    parser.add_argument("--out", required=True, type=Path)
    _common(parser)
    parser.set_defaults(run=_generate)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export", help="write concepts as a LoRA + textual-inversion embeddings (diffusers, A1111, ComfyUI)"
    )
    parser.add_argument("--session", required=True, type=Path)
    parser.add_argument("--checkpoint", type=int, default=None, help="export its state (default: the latest)")
    config_options(parser, ExportConfig, EXPORT_OPTIONS)
    _set_option(parser, "an ExportConfig field")
    parser.add_argument("--out", required=True, type=Path, help="a new folder")
    _common(parser)
    parser.set_defaults(run=_export)


def _import_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "import-lora", help="add a diffusers or kohya LoRA + embedding made for the same base as a concept"
    )
    parser.add_argument("--session", required=True, type=Path)
    parser.add_argument("--lora", required=True, type=Path, help="the LoRA's .safetensors file")
    parser.add_argument("--embedding", required=True, type=Path, help="its token's .safetensors embedding")
    parser.add_argument("--name", default="", help="concept name (default: the embedding's own <token>)")
    parser.add_argument("--class-word", default="", help="what it is, e.g. dog")
    _common(parser)
    parser.set_defaults(run=_import_lora)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lifelong", description="Teach a diffusion model concepts, one after another."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _learn_parser(sub)
    _generate_parser(sub)
    _export_parser(sub)
    _import_parser(sub)
    info = sub.add_parser("info", help="list a session's checkpoints")
    info.add_argument("--session", required=True, type=Path)
    info.set_defaults(run=_info)
    methods = sub.add_parser("methods", help="list the learning methods and their settings")
    methods.set_defaults(run=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except LifelongError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
