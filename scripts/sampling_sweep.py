"""Learnability at several sampling settings, each concept learned once (the learnability benchmark's scoring).

    LIFELONG_TORCH_THREADS=1 PYTHONPATH=. python scripts/sampling_sweep.py runs/gsweep [--concepts 12]

Each of the first ``--concepts`` held-out concepts is learned with the app's defaults (as
``python -m lifelong.bench --learn`` does, same seed), kept under OUT/sessions (a rerun reuses a concept
learned before), and its benchmark images (two backgrounds × 4 seeds) are scored at every sampling
setting of SETTINGS: identification, normalised IA and background, per concept as it goes and the means.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

from lifelong.base import BaseConfig, get_base
from lifelong.bench.learnability import prompts, reference_features, score
from lifelong.colors import NAMED_COLORS
from lifelong.concepts import Session
from lifelong.folders import BUNDLED_CONCEPTS, load_concepts
from lifelong.generation import GenerateConfig, generate
from lifelong.learner import LearnConfig, learn_folder
from lifelong.metrics import IdentityEncoder, background_color, identity_features

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = (
    {"guidance_scale": 2.0},
    {"guidance_scale": 2.5},
    {"guidance_scale": 3.0},
    {"guidance_scale": 4.0},
    {"guidance_scale": 3.0, "steps": 50},
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--concepts", type=int, default=12)
    args = parser.parse_args()
    everyone = load_concepts(BUNDLED_CONCEPTS)
    base = get_base(BaseConfig(model=str(ROOT / "assets" / "base-model")))
    encoder = IdentityEncoder.load(ROOT / "assets" / "eval-identity", base.device)
    references = reference_features(encoder, everyone, base.resolution)
    rows: dict[str, list[tuple[float, float, float]]] = {str(s): [] for s in SETTINGS}
    for k, concept in enumerate(everyone[: args.concepts]):
        root = args.out / "sessions" / concept.name
        if not (root / "learned").exists():
            shutil.rmtree(root, ignore_errors=True)
            learn_folder(base, Session.create(root, base.name), concept, LearnConfig())
            (root / "learned").touch()
        session = Session.open(root)
        for setting in SETTINGS:
            config = replace(GenerateConfig(num_images=4, seed=0), **setting)
            images, colors = [], []
            for prompt, _, color in prompts(concept):
                batch = generate(base, session, prompt, config)
                images += batch
                colors += [color] * len(batch)
            identification, ia, others, self_sim = score(k, identity_features(encoder, images), references)
            normalised = (ia - others) / (self_sim - others)
            background = statistics.fmean(
                background_color(image, NAMED_COLORS) == c for image, c in zip(images, colors, strict=True)
            )
            rows[str(setting)].append((identification, normalised, background))
            print(
                f"{concept.name} {setting}: id {identification:.2f} nIA {normalised:.2f} bg {background:.2f}"
            )
    for setting, values in rows.items():
        means = " ".join(f"{statistics.fmean(v[i] for v in values):.3f}" for i in range(3))
        print(f"mean over {len(values)} concepts {setting}: id / nIA / background {means}")


if __name__ == "__main__":
    main()
