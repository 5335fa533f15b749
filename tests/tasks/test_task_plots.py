"""Figures are written as PNG files (confusion, data efficiency, t-SNE of speakers)."""

from __future__ import annotations

import numpy as np
import pytest

from ctal_ds.tasks.emotion import EMOTIONS
from ctal_ds.tasks.plots import plot_confusion, plot_data_efficiency, plot_tsne, tsne_2d

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000


def test_confusion_matrix_figure(tmp_path):
    cm = np.array([[30, 2, 5, 1], [3, 20, 6, 0], [4, 3, 50, 7], [0, 0, 4, 25]])
    assert_png(plot_confusion(cm, EMOTIONS, tmp_path / "figs" / "confusion.png", title="fold1"))


def test_confusion_matrix_must_match_its_labels(tmp_path):
    with pytest.raises(ValueError, match="does not match 4 labels"):
        plot_confusion(np.zeros((3, 3)), EMOTIONS, tmp_path / "c.png")


def test_data_efficiency_figure_one_line_per_variant(tmp_path):
    results = {
        "CTAL": [(0.1, 0.62), (0.5, 0.70), (1.0, 0.74)],
        "w/o pre-training": [(1.0, 0.70), (0.1, 0.51), (0.5, 0.64)],
    }
    assert_png(plot_data_efficiency(results, "WA", tmp_path / "wa.png"))


def test_tsne_figure_of_few_utterances_caps_the_perplexity(tmp_path):
    rng = np.random.default_rng(0)
    emb = np.repeat(rng.normal(size=(3, 8)), 4, axis=0) + 0.01 * rng.normal(size=(12, 8))
    speakers = [s for s in ("19", "26", "103") for _ in range(4)]
    assert_png(plot_tsne(emb, speakers, tmp_path / "tsne.png"))  # 12 points < default perplexity 30
    with pytest.raises(ValueError, match="N >= 3"):
        tsne_2d(emb[:2])
