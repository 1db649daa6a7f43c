"""Figures shared by the app and the benchmark reports (matplotlib, drawn off-screen)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files and images only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
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
