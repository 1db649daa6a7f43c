"""Command line: ``python -m lifelong learn|generate|info``, with tqdm progress."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from lifelong.base import BaseConfig, BaseModel, compile_requested, default_model, get_base
from lifelong.concepts import Session
from lifelong.errors import LifelongError
from lifelong.generate import GenerateConfig, generate, generate_with_maps
from lifelong.learner import LearnConfig, learn
from lifelong.methods import DEFAULT_METHOD, describe
from lifelong.overrides import override, parse_pairs
from lifelong.progress import Progress


def _base(args: argparse.Namespace, session: Session | None = None) -> BaseModel:
    """--model, else the model the session was learned on ("" = the default model)."""
    model = args.model or (session.base_model if session else "")
    # one command makes few images: a compile would cost more than it saves unless asked for
    return get_base(BaseConfig(model=model, device=args.device, compile=compile_requested()))


def _learn(args: argparse.Namespace) -> None:
    session = Session.create(args.session, args.model)
    base = _base(args, session)
    values = parse_pairs(args.set)
    values.update({k: v for k, v in (("method", args.method), ("steps", args.steps)) if v is not None})
    config = override(LearnConfig(), values)
    with tqdm(total=config.steps, desc=f"learning <{args.name}>", unit="step") as bar:

        def show(progress: Progress) -> None:
            bar.update(progress.step - bar.n)
            bar.set_postfix(loss=f"{progress.loss:.4f}")

        result = learn(base, session, args.images, args.name, args.class_word, config, show)
    concept = result.concept
    print(
        f"learned {concept.token} with {concept.method} in {concept.seconds:.1f} s as checkpoint {len(session.concepts)}"
    )


def _generate(args: argparse.Namespace) -> None:
    session = Session.open(args.session) if args.session else None
    base = _base(args, session)
    config = GenerateConfig(
        steps=args.steps,
        guidance_scale=args.guidance,
        negative_prompt=args.negative,
        num_images=args.num_images,
        seed=args.seed,
        icgen_strength=args.icgen_strength,
        icgen_context=args.icgen_context,
    )
    config = override(config, parse_pairs(args.set))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lifelong", description="Teach a diffusion model concepts, one after another."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", default="", help="hub id or folder of an SD-1.x pipeline (default: the bundled model)"
        )
        p.add_argument("--device", default="", help="cpu, cuda, ... (default: what accelerate finds)")

    learn_p = sub.add_parser("learn", help="learn a concept from 1-20 images (3-5 recommended)")
    learn_p.add_argument("--session", required=True, type=Path)
    learn_p.add_argument("--name", required=True, help="concept name; prompts use it as <name>")
    learn_p.add_argument("--class-word", default="", help="what it is, e.g. dog")
    learn_p.add_argument(
        "--method", default=None, help=f"see `python -m lifelong methods` (default {DEFAULT_METHOD})"
    )
    learn_p.add_argument("--steps", type=int, default=None)
    learn_p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a LearnConfig field or method setting",
    )
    learn_p.add_argument("images", nargs="+")
    common(learn_p)
    learn_p.set_defaults(run=_learn)

    gen_p = sub.add_parser("generate", help="generate images at a checkpoint")
    gen_p.add_argument("--session", type=Path, default=None, help="omit to use the base model alone")
    gen_p.add_argument("--prompt", required=True)
    gen_p.add_argument("--negative", default="")
    gen_p.add_argument("--checkpoint", type=int, default=None, help="0 = base; default: the latest")
    gen_p.add_argument("--num-images", type=int, default=4)
    gen_p.add_argument("--steps", type=int, default=25)
    gen_p.add_argument("--guidance", type=float, default=5.0)
    gen_p.add_argument("--seed", type=int, default=0)
    gen_p.add_argument(
        "--icgen-strength",
        type=float,
        default=1.0,
        help="below 1: start from a named concept's stored image latent noised to this strength (ICGen)",
    )
    gen_p.add_argument("--icgen-context", default="mean", help="'mean' or the index of a context image")
    gen_p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any GenerateConfig field, e.g. caa=false",
    )
    gen_p.add_argument(
        "--maps", action="store_true", help="also save where each word attends (attention maps)"
    )
    gen_p.add_argument("--out", required=True, type=Path)
    common(gen_p)
    gen_p.set_defaults(run=_generate)

    info_p = sub.add_parser("info", help="list a session's checkpoints")
    info_p.add_argument("--session", required=True, type=Path)
    info_p.set_defaults(run=_info)

    methods_p = sub.add_parser("methods", help="list the learning methods and their settings")
    methods_p.set_defaults(run=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except LifelongError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
