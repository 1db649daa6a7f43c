"""Is a learned concept still present when it shares the image with a plain object? (the multi benchmark's test)

    LIFELONG_TORCH_THREADS=1 PYTHONPATH=. python scripts/multi_partner.py runs/multi-regional/sessions/multi

For each concept of a session learned by ``python -m lifelong.bench --multi`` (after the first, whose
images the bundled VAE cannot decode), 8 images of the concept alone, beside a plain "cat face" (a
training object of the bundled world) and with the two swapped. Each image's concept is scored as that
benchmark scores a pair: the half-side crop around the concept's cross-attention peak is present when it is
closer to the concept's references than to any other concept's. No second concept's deltas are involved:
what drops here drops because the concept shares the image, not because two concepts are mixed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lifelong.attention import AttentionRecord
from lifelong.base import BaseConfig, get_base
from lifelong.bench.multi import MultiEvaluator, peak_crop
from lifelong.concepts import Session
from lifelong.folders import BUNDLED_CONCEPTS, load_concepts
from lifelong.generation import GenerateConfig, generate
from lifelong.metrics import EvalClip, IdentityEncoder

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("session", type=Path)
    args = parser.parse_args()
    base = get_base(BaseConfig(model=str(ROOT / "assets" / "base-model")))
    everyone = load_concepts(BUNDLED_CONCEPTS)
    clip = EvalClip.load(ROOT / "assets" / "eval-clip", base.device)
    identity = IdentityEncoder.load(ROOT / "assets" / "eval-identity", base.device)
    evaluator = MultiEvaluator(base, clip, everyone, identity)
    session = Session.open(args.session)
    names = [c.name for c in everyone]
    config = GenerateConfig(steps=20, num_images=IMAGES, seed=0)
    for name in session.names()[1:]:
        k = names.index(name)
        others = [j for j in range(len(names)) if j != k]
        for prompt in (
            f"a <{name}> animal on a white background",
            f"a <{name}> animal and a cat face on a white background",
            f"a cat face and a <{name}> animal on a white background",
        ):
            record = AttentionRecord()
            images = generate(base, session, prompt, config, record=record)
            maps = record.label_maps([f"<{name}>"])
            present = 0
            for n, image in enumerate(images):
                scores = evaluator.scores([peak_crop(image, maps[n, 0])])[0]
                present += float(scores[k]) > float(scores[others].max())
            print(f"{prompt}: present in {present}/{IMAGES}", flush=True)


if __name__ == "__main__":
    main()
