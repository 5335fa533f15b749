"""Seeds, spreads and claims: the comparison table calls a difference only beyond the spread."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from ctal_ds.finetune.compare import Outcome, claims, summary_markdown, summary_rows
from ctal_ds.finetune.config import FinetuneConfig, TaskDataConfig
from ctal_ds.train.config import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "launch"))
from ablate import parse_seeds  # noqa: E402


def outcomes(variant: str, values: list[float], fraction: float = 0.1, task: str = "emotion") -> list[Outcome]:
    return [Outcome(task, variant, fraction, True, {"ua": v, "wa": v}) for v in values]


def test_rows_are_means_and_sample_stds_over_seeds():
    rows = summary_rows(outcomes("pretrained", [0.5, 0.6, 0.7]), {"pretrained": "CTAL"})
    (row,) = rows
    assert (row["n"], row["table4"]) == (3, "CTAL")
    assert row["ua"] == pytest.approx(0.6) and row["ua_std"] == pytest.approx(0.1)


def test_a_gap_larger_than_both_spreads_is_called_and_a_smaller_one_is_not():
    rows = summary_rows(outcomes("pretrained", [0.70, 0.72, 0.74]) + outcomes("scratch", [0.50, 0.52, 0.54]))
    verdicts = {c["metric"]: c for c in claims(rows)}
    assert verdicts["ua"]["verdict"] == "better" and verdicts["ua"]["difference"] == pytest.approx(0.2)
    close = summary_rows(outcomes("pretrained", [0.50, 0.60, 0.70]) + outcomes("scratch", [0.45, 0.55, 0.65]))
    assert {c["verdict"] for c in claims(close)} == {"within spread"}
    worse = summary_rows(outcomes("pretrained", [0.3, 0.31, 0.32]) + outcomes("scratch", [0.5, 0.51, 0.52]))
    assert {c["verdict"] for c in claims(worse)} == {"worse"}


def test_lower_is_better_metrics_flip_the_verdict_and_one_seed_makes_no_claim():
    mae = [Outcome("sentiment", "pretrained", 1.0, True, {"mae": m}) for m in (0.80, 0.81, 0.82)]
    mae += [Outcome("sentiment", "scratch", 1.0, True, {"mae": m}) for m in (0.90, 0.91, 0.92)]
    (c,) = [c for c in claims(summary_rows(mae)) if c["metric"] == "mae"]
    assert c["verdict"] == "better" and c["difference"] < 0
    single = summary_rows(outcomes("probe", [0.9]) + outcomes("probe_random", [0.1]))
    assert {c["verdict"] for c in claims(single)} == {"n < 2"}


def test_markdown_shows_n_the_spread_and_the_verdicts():
    rows = summary_rows(outcomes("pretrained", [0.7, 0.72]) + outcomes("scratch", [0.5, 0.52]))
    text = summary_markdown(rows)
    assert "| pretrained |  | 0.1 | 2 | 0.7100 ± 0.0141 |" in text
    assert "| emotion | 0.1 | pretrained | scratch | ua | +0.2000 | 0.0283 | better |" in text


def test_unfinished_runs_are_counted_out():
    rows = summary_rows(outcomes("scratch", [0.5]) + [Outcome("emotion", "scratch", 0.1, False, {})])
    assert rows[0]["n"] == 1 and not rows[0]["finished"] and math.isclose(rows[0]["ua"], 0.5)


def test_seed_counts_per_fraction():
    assert parse_seeds("3", [0.1, 1.0]) == {0.1: (0, 1, 2), 1.0: (0, 1, 2)}
    assert parse_seeds("0.1:3,1:2", [0.1, 0.3, 1.0]) == {0.1: (0, 1, 2), 0.3: (0,), 1.0: (0, 1)}
    for bad in ("x", "0.5:2", "0"):
        with pytest.raises(ConfigError):
            parse_seeds(bad, [0.1, 1.0])


def test_min_steps_adds_epochs_to_a_small_training_set_only(tmp_path):
    cfg = FinetuneConfig(tmp_path, Path("ds.json"), TaskDataConfig("emotion", tmp_path), epochs=6, min_steps=150)
    assert cfg.epochs_for(4) == 38  # 37 utterances in batches of 8: 152 steps
    assert cfg.epochs_for(46) == 6
