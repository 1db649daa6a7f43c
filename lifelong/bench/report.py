"""What a lifelong benchmark run leaves in --out: results.json, report.md and the plots.

- ``ia_matrix_<method>.png``: the IA(i, j) heat map (row i = concept i, column j = after concept j);
- ``forgetting_curves.png``: IA of each concept over the sequence, one panel per method;
- ``before_after.png``: per method, each earlier concept's first eval image right after it was learned and
  after the last concept (same prompt, same seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from lifelong.bench.sequence import REFERENCE, MethodResult  # noqa: E402
from lifelong.files import atomic_write, write_json  # noqa: E402
from lifelong.plots import ia_heatmap  # noqa: E402

TILE = 96
LABEL_WIDTH = 150
HEADER = 16

COLUMNS = (
    ("TA", "TA ↑", "{:.3f}"),
    ("IA_own", "IA(i,i) ↑", "{:.3f}"),
    ("IA_final", "IA(i,N) ↑", "{:.3f}"),
    ("IAD", "IAD ↓", "{:.4f}"),
    ("TFR", "TFR ↓", "{:.3f}"),
    ("base_drift", "base drift ↓", "{:.4f}"),
    ("seconds_per_concept", "s / concept", "{:.1f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
)


def _cell(value: float, fmt: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else fmt.format(value)


def table(results: dict[str, MethodResult]) -> str:
    """The methods side by side as a markdown table, one row per method."""
    lines = [
        "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, result in results.items():
        cells = [_cell(getattr(result, key), fmt) for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def against_baseline(results: dict[str, MethodResult], baseline: str = "finetune") -> str:
    """Each method next to the baseline: IAD as a fraction of the baseline's, and differences (method −
    baseline) in base drift, TA and IA(i,i). Empty when the baseline was not run."""
    if baseline not in results:
        return ""
    ref = results[baseline]
    lines = [
        f"| method | IAD / IAD({baseline}) | Δ base drift | Δ TA | Δ IA(i,i) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        ratio = result.IAD / ref.IAD if ref.IAD > 0 else math.nan  # a ratio to "no forgetting" means nothing
        cells = [
            _cell(ratio, "{:.2f}"),
            _cell(result.base_drift - ref.base_drift, "{:+.4f}"),
            _cell(result.TA - ref.TA, "{:+.3f}"),
            _cell(result.IA_own - ref.IA_own, "{:+.3f}"),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _matrix_array(result: MethodResult) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in result.IA_matrix], dtype=float)


def plot_ia_matrix(path: Path, method: str, result: MethodResult, names: Sequence[str]) -> None:
    _save_figure(ia_heatmap(_matrix_array(result), names, f"IA(i, j): {method}"), path)


def plot_forgetting_curves(path: Path, results: dict[str, MethodResult], names: Sequence[str]) -> None:
    count = len(results)
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure, grid = plt.subplots(
        rows, columns, figsize=(3.2 * columns, 2.6 * rows), sharey=True, squeeze=False
    )
    matrices = {name: _matrix_array(result) for name, result in results.items()}
    finite = np.concatenate([m[np.isfinite(m)] for m in matrices.values()])
    low, high = float(finite.min()), float(finite.max())
    pad = max(0.01, (high - low) * 0.1)
    n = len(names)
    for axes, (method, matrix) in zip(grid.flat, matrices.items(), strict=False):
        for i in range(n):
            axes.plot(range(i + 1, n + 1), matrix[i, i:], marker="o", markersize=3, label=names[i])
        axes.set_title(method, fontsize=10)
        axes.set_xticks(range(1, n + 1))
        axes.set_ylim(low - pad, high + pad)
        axes.set_xlabel("after concept j", fontsize=8)
    for axes in grid[:, 0]:
        axes.set_ylabel("IA(i, j)")
    for axes in list(grid.flat)[count:]:
        axes.axis("off")
    grid.flat[0].legend(fontsize=6, loc="lower left")
    figure.tight_layout()
    _save_figure(figure, path)


def before_after_grid(out: Path, results: dict[str, MethodResult], names: Sequence[str]) -> Image.Image:
    """Columns: the earlier concepts. Rows: a reference image, then per method "right after learning it"
    and "after the last concept" (the first eval prompt, first seed)."""
    n = len(names)
    earlier = max(1, n - 1)
    height = HEADER + (1 + 2 * len(results)) * TILE
    sheet = Image.new("RGB", (LABEL_WIDTH + earlier * TILE, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((4, HEADER + TILE // 2 - 6), "reference", fill="black", font=font)
    for i in range(n - 1):
        draw.text((LABEL_WIDTH + i * TILE + 3, 2), names[i][:15], fill="black", font=font)
        with Image.open(out / REFERENCE.format(i=i)) as image:
            sheet.paste(image.convert("RGB").resize((TILE, TILE)), (LABEL_WIDTH + i * TILE, HEADER))
    for row, (method, result) in enumerate(results.items()):
        for half, label in enumerate(("right after", f"after concept {n}")):
            top = HEADER + (1 + 2 * row + half) * TILE
            draw.text((4, top + TILE // 2 - 12), f"{method}\n{label}", fill="black", font=font)
            for i in range(n - 1):
                key = f"{i}_after_{i if half == 0 else n - 1}"
                with Image.open(out / result.images[key]) as image:
                    tile = image.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)
                sheet.paste(tile, (LABEL_WIDTH + i * TILE, top))
    return sheet


def _save_figure(figure: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


def write_report(
    out: Path,
    document: dict[str, object],
    results: dict[str, MethodResult],
    names: Sequence[str],
    command: str,
) -> None:
    """Write results.json, report.md and every plot into ``out``."""
    write_json(out / "results.json", document)
    for method, result in results.items():
        plot_ia_matrix(out / f"ia_matrix_{method}.png", method, result, names)
    plot_forgetting_curves(out / "forgetting_curves.png", results, names)
    if len(names) > 1:
        grid = before_after_grid(out, results, names)
        atomic_write(out / "before_after.png", lambda tmp: grid.save(tmp, format="PNG"))
    config: dict = document["config"]  # type: ignore[assignment]
    first_prompts: list[str] = next(iter(document["eval_prompts"].values()))  # type: ignore[attr-defined]
    lines = [
        "# Lifelong benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"- model `{document['model']}`, eval CLIP `{document['eval_clip']}`",
        f"- concepts, in learning order: {', '.join(f'`<{name}>`' for name in names)}",
        f"- {config['steps']} learning steps per concept, seed {config['seed']}; eval images: "
        f"{config['images_per_prompt']} per prompt (seeds {config['seed']}…), {config['sample_steps']} DDIM "
        f"steps, guidance {config['guidance_scale']}",
        f"- eval prompts per concept, e.g. {', '.join(f'`{p}`' for p in first_prompts)}",
        f"- base-drift prompts: {', '.join(f'`{p}`' for p in document['drift_prompts'])}",  # type: ignore[attr-defined]
        "",
        table(results),
        "",
        against_baseline(results),
        "",
        "TA: text alignment of each concept's images right after learning it (TA at the end of the "
        "sequence is `TA_final` in results.json). IA(i,i): image alignment right after learning concept i; "
        "IA(i,N): after the last concept. IAD = mean over i < N of IA(i,i) − IA(i,N); "
        "TFR = mean of (IA(i,i) − IA(i,N)) / IA(i,i). Base drift = 1 − mean cosine between the base "
        "model's and the final model's images of base prompts, same seeds (0 = unchanged). "
        "s / concept: wall time of learning one concept (with what the method stores after it), no evaluation. Peak MB: the most memory held above the start while learning "
        "(CPU: sampled resident-set growth; CUDA: torch.cuda.max_memory_allocated).",
        "",
        "![forgetting curves](forgetting_curves.png)",
        "",
    ]
    if len(names) > 1:
        lines += ["![before and after](before_after.png)", ""]
    lines += [f"![IA matrix {method}](ia_matrix_{method}.png)" for method in results]
    text = "\n".join(lines) + "\n"

    def write_text(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(out / "report.md", write_text)
