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

from lifelong.bench.intervals import (  # noqa: E402
    BASELINE,
    FIGURES,
    PLANNED,
    MethodStatistics,
    run_statistics,
)
from lifelong.bench.sequence import REFERENCE, MethodResult, finite_or_none  # noqa: E402
from lifelong.files import atomic_write, write_json  # noqa: E402
from lifelong.plots import forgetting_curves, ia_heatmap  # noqa: E402
from lifelong.stats import LEVEL, RESAMPLES, SEED, TARGET_HALF_WIDTH, Interval, SampleSize  # noqa: E402

TILE = 96
LABEL_WIDTH = 150
HEADER = 16

# (results.json key, title, format); the figures among them are shown with their intervals
COLUMNS = (
    ("TA", "TA ↑", ".3f"),
    ("IA_own", "IA(i,i) ↑", ".3f"),
    ("IA_final", "IA(i,N) ↑", ".3f"),
    ("IAD", "IAD ↓", ".4f"),
    ("TFR", "TFR ↓", ".3f"),
    ("base_drift", "base drift ↓", ".4f"),
    ("seconds_per_concept", "s / concept", ".1f"),
    ("peak_memory_mb", "peak MB", ".0f"),
)
PAIRED = [(key, title.rstrip(" ↑↓"), fmt) for key, title, fmt in COLUMNS if key in FIGURES]


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, fmt)


def table(results: dict[str, MethodResult], statistics: dict[str, MethodStatistics]) -> str:
    """The methods side by side as a markdown table, one row per method; each figure as "value [95 %
    interval]" when the method kept its samples."""
    lines = [
        "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, result in results.items():
        intervals = statistics[name].intervals if name in statistics else {}
        cells = [
            intervals[key].format(fmt) if key in intervals else _cell(getattr(result, key), fmt)
            for key, _, fmt in COLUMNS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(statistics: dict[str, MethodStatistics], baseline: str = BASELINE) -> str:
    """Each method minus the baseline on the same concepts, prompts and seeds: the difference [95 %
    interval], in bold when the interval excludes 0. Empty when the baseline was not run."""
    rows = {name: stats.paired for name, stats in statistics.items() if stats.paired}
    if not rows:
        return ""
    lines = [
        "| method | " + " | ".join(f"Δ {title}" for _, title, _ in PAIRED) + " |",
        "|---|" + "---:|" * len(PAIRED),
    ]
    for name, paired in rows.items():
        cells = []
        for key, _, fmt in PAIRED:
            if key not in paired:
                cells.append("n/a")
                continue
            text = paired[key].difference.format("+" + fmt)
            cells.append(f"**{text}**" if paired[key].excludes_zero else text)
        lines.append(f"| {name} − {baseline} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plan_cells(plan: SampleSize | None, interval: Interval | None) -> list[str]:
    if plan is None or interval is None:
        return ["n/a", "n/a"]
    if plan.images_needed is None:
        needed = f"none with {plan.concepts} concepts (≥ {plan.concepts_needed} concepts at {plan.images})"
    else:
        needed = str(plan.images_needed)
    return [f"± {interval.half_width:.4f}", needed]


def plans_table(statistics: dict[str, MethodStatistics]) -> str:
    """Per method: the half-width of IAD's interval and of the paired differences, and the eval images
    per concept and checkpoint that would bring each to ± TARGET_HALF_WIDTH."""
    target = f"images for ± {TARGET_HALF_WIDTH}"
    lines = [
        f"| method | IAD now | {target} | Δ IA(i,N) now | {target} | Δ IAD now | {target} |",
        "|---|" + "---:|" * 6,
    ]
    for name, stats in statistics.items():
        cells = _plan_cells(stats.plans.get("IAD"), stats.intervals.get("IAD"))
        for key in PLANNED:
            paired = stats.paired.get(key)
            cells += _plan_cells(stats.plans.get(f"Δ {key}"), paired.difference if paired else None)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _matrix_array(result: MethodResult) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in result.IA_matrix], dtype=float)


def _curve_bounds(result: MethodResult, stats: MethodStatistics | None) -> tuple[np.ndarray, np.ndarray]:
    """IA(i, j)'s interval bounds; the entry itself (no bar) for results without samples."""
    if stats is None:
        return _matrix_array(result), _matrix_array(result)
    low = [[np.nan if cell is None else cell.low for cell in row] for row in stats.curve]
    high = [[np.nan if cell is None else cell.high for cell in row] for row in stats.curve]
    return np.array(low, dtype=float), np.array(high, dtype=float)


def plot_ia_matrix(path: Path, method: str, result: MethodResult, names: Sequence[str]) -> None:
    _save_figure(ia_heatmap(_matrix_array(result), names, f"IA(i, j): {method}"), path)


def plot_forgetting_curves(
    path: Path,
    results: dict[str, MethodResult],
    statistics: dict[str, MethodStatistics],
    names: Sequence[str],
) -> None:
    """One panel per method: each concept's IA over the sequence with its 95 % interval."""
    count = len(results)
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure, grid = plt.subplots(
        rows, columns, figsize=(3.2 * columns, 2.6 * rows), sharey=True, squeeze=False
    )
    curves = {
        name: (_matrix_array(result), *_curve_bounds(result, statistics.get(name)))
        for name, result in results.items()
    }
    finite = np.concatenate([np.concatenate([m[np.isfinite(m)] for m in c]) for c in curves.values()])
    low, high = float(finite.min()), float(finite.max())
    pad = max(0.01, (high - low) * 0.1)
    for axes, (method, (mean, bottom, top)) in zip(grid.flat, curves.items(), strict=False):
        forgetting_curves(axes, mean, bottom, top, names)
        axes.set_title(method, fontsize=10)
        axes.set_ylim(low - pad, high + pad)
    for axes in grid[:, 0]:
        axes.set_ylabel("IA(i, j), 95 % interval")
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


def _write_plots(
    out: Path, results: dict[str, MethodResult], statistics: dict[str, MethodStatistics], names: Sequence[str]
) -> None:
    for method, result in results.items():
        plot_ia_matrix(out / f"ia_matrix_{method}.png", method, result, names)
    plot_forgetting_curves(out / "forgetting_curves.png", results, statistics, names)
    if len(names) > 1:
        grid = before_after_grid(out, results, names)
        atomic_write(out / "before_after.png", lambda tmp: grid.save(tmp, format="PNG"))


def _statistics_lines(
    results: dict[str, MethodResult],
    statistics: dict[str, MethodStatistics],
    names: Sequence[str],
    resamples: int,
) -> list[str]:
    """What the intervals are, the paired comparisons with the baseline and the sample-size plans; nothing
    for results without samples."""
    if not statistics:
        return []
    lines = [
        f"[low, high]: 95 % interval, percentile bootstrap ({resamples} resamples, seed {SEED}) over the "
        "concepts and, within each, its eval images (prompts × seeds); over drift prompts and their seeds for "
        "base drift (lifelong/stats.py). IAD is taken per image: IA(i,i) − IA(i,N) of the same prompt and "
        "seed.",
        "",
    ]
    paired = paired_table(statistics)
    if paired:
        lines += [
            f"Paired with `{BASELINE}` (method − {BASELINE}, the same concepts, prompts and seeds drawn for "
            "both); **bold**: the interval excludes 0.",
            "",
            paired,
            "",
        ]
    first = results[next(iter(statistics))].IA_images[0][0]
    images = len(first) if first is not None else 0
    return lines + [
        f"Eval images per concept and checkpoint: {images}; IAD is measured on the {len(names) - 1} "
        "concept(s) followed by others. *Now*: the half-width of the 95 % interval above; *images for "
        f"± {TARGET_HALF_WIDTH}*: the eval images per concept and checkpoint that would make it "
        f"± {TARGET_HALF_WIDTH} with this many concepts, from the measured variance within and between "
        "concepts (normal approximation, lifelong.stats.sample_size; with one concept the spread between "
        "concepts is unknown and only the seeds count).",
        "",
        plans_table(statistics),
        "",
    ]


def write_report(
    out: Path,
    document: dict[str, object],
    results: dict[str, MethodResult],
    names: Sequence[str],
    command: str,
    resamples: int = RESAMPLES,
) -> None:
    """Write results.json (``document`` with the statistics added), report.md and every plot into ``out``."""
    statistics = run_statistics(results, BASELINE, resamples)
    document = document | {
        "statistics": {
            "bootstrap": {"resamples": resamples, "seed": SEED, "level": LEVEL, "baseline": BASELINE},
            "methods": {name: stats.to_json() for name, stats in statistics.items()},
        }
    }
    write_json(out / "results.json", finite_or_none(document))
    _write_plots(out, results, statistics, names)
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
        table(results, statistics),
        "",
    ]
    lines += _statistics_lines(results, statistics, names, resamples)
    lines += [
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
