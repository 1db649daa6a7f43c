"""Figures shared by the app and the benchmark reports (matplotlib, drawn off-screen)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files and images only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def ia_heatmap(matrix: np.ndarray, names: Sequence[str], title: str = "") -> Figure:
    """The IA(i, j) matrix as a heat map: row i = concept i, column j = after learning concept j; cells
    that are NaN (j < i) stay empty. The caller saves and closes the figure."""
    n = len(names)
    figure, axes = plt.subplots(figsize=(1.2 + 0.62 * n, 0.9 + 0.55 * n), dpi=110)
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap="viridis")
    middle = np.nanmin(matrix) + 0.6 * (np.nanmax(matrix) - np.nanmin(matrix))
    for i in range(n):
        for j in range(i, n):
            color = "black" if matrix[i, j] > middle else "white"  # readable on viridis' light end
            axes.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    axes.set_xticks(range(n), [str(j + 1) for j in range(n)])
    axes.set_yticks(range(n), names, fontsize=8)
    axes.set_xlabel("after learning concept j")
    if title:
        axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.8, label="IA")
    figure.tight_layout()
    return figure


def forgetting_curves(
    axes: Axes, mean: np.ndarray, low: np.ndarray, high: np.ndarray, names: Sequence[str]
) -> None:
    """Row i of the IA matrix from checkpoint i on, one line per concept, its interval as error bars.
    Lines are shifted sideways a little so that the bars of different concepts do not hide each other."""
    n = len(names)
    for i in range(n):
        x = np.arange(i + 1, n + 1) + 0.3 * (i - (n - 1) / 2) / max(1, n - 1)
        y = mean[i, i:]
        errors = np.stack([y - low[i, i:], high[i, i:] - y])
        axes.errorbar(x, y, yerr=errors, marker="o", markersize=3, capsize=2, linewidth=1, label=names[i])
    axes.set_xticks(range(1, n + 1))
    axes.set_xlabel("after concept j", fontsize=8)
