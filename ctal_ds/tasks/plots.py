"""Figures of the evaluation: confusion matrix (IEMOCAP), data-efficiency curves
(paper figures 2-3) and t-SNE of speaker embeddings (paper figure 4).

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, never
through pyplot: no global backend is chosen or changed, and nothing needs a display,
so these run on cluster nodes and inside a training process alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_confusion(
    cm: np.ndarray, labels: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Rows = true class, columns = predicted; colour is the row-normalised recall (so
    rare classes are as visible as frequent ones), text is count and recall."""
    cm = np.asarray(cm)
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(labels)} labels")
    totals = cm.sum(axis=1, keepdims=True)
    recall = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    fig = Figure(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(recall, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, label="recall")
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if recall[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{recall[i, j]:.0%}", ha="center", va="center", color=colour)
    ax.set(
        xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels
    )
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def plot_data_efficiency(
    results: Mapping[str, Sequence[tuple[float, float]]], metric_name: str, path: str | Path
) -> Path:
    """One line per variant (e.g. CTAL, w/o pre-training) of ``metric_name`` against the
    fraction of training data used, as in paper figures 2-3. A point is (fraction,
    value) or (fraction, mean, std over seeds); the std is drawn as an error bar."""
    if not results:
        raise ValueError("no variants to plot")
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot()
    for variant, points in results.items():
        if not points:
            raise ValueError(f"variant {variant!r} has no points")
        rows = sorted(tuple(p) + (0.0,) * (3 - len(p)) for p in points)
        fractions, values, stds = zip(*rows)
        ax.errorbar([100 * f for f in fractions], values, yerr=stds, marker="o", capsize=3, label=variant)
    ax.set(xlabel="training data used (%)", ylabel=metric_name)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def tsne_2d(embeddings: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE to 2-D. Perplexity is capped at (n - 1) / 3 (at least 1): t-SNE needs
    perplexity < n, and ~3 perplexities of neighbours per point to be meaningful, which
    a 10-speaker figure from a few utterances each does not have at 30."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"t-SNE needs [N >= 3, D] embeddings, got shape {x.shape}")
    perplexity = max(1.0, min(perplexity, (len(x) - 1) / 3))
    # Exact gradients up to a few hundred points: there Barnes-Hut's tree and thread
    # start-up cost more than the O(N^2) it saves (12 points: 0.2 s exact, 4+ s Barnes-Hut).
    method = "exact" if len(x) <= 500 else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method, random_state=seed)
    return tsne.fit_transform(x)


def plot_tsne(
    embeddings: np.ndarray,
    speakers: Sequence[str],
    path: str | Path,
    seed: int = 0,
    title: str = "",
) -> Path:
    """Utterance embeddings in 2-D by t-SNE, one colour per speaker (paper figure 4)."""
    if len(speakers) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(speakers)} speakers")
    points = tsne_2d(embeddings, seed=seed)
    names = sorted(set(speakers))
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    # Ten distinct colours cover the paper's 10-speaker figure; beyond, tab20, then repeats.
    palette = [f"C{k}" for k in range(10)] if len(names) <= 10 else list(colormaps["tab20"].colors)
    for k, name in enumerate(names):
        mask = np.array([s == name for s in speakers])
        colour = palette[k % len(palette)]
        ax.scatter(points[mask, 0], points[mask, 1], s=14, color=colour, label=name)
    if len(names) <= 20:
        ax.legend(fontsize="small", markerscale=1.5, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set(xticks=[], yticks=[], title=title)
    return _save(fig, path)
