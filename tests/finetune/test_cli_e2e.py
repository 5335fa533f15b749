"""The launch scripts as users run them: finetune over all folds, evaluate an export,
ablate with data fractions, compare the store they wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import finetune_runs as runs
import pytest
import torch

from ctal_ds.model import CTALConfig, CTALForPretraining
from ctal_ds.train.checkpoint import latest_complete

# Above the bounded waits of any one test: two launch scripts of 500 s each at most.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

COMMON = ["--epochs", "1", "--lr", "3e-3", "--micro-batch-size", "4", "--log-every", "5"]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(runs.REPO / "launch" / f"{script}.py"), *args], env=env,
                          cwd=runs.REPO, capture_output=True, text=True, timeout=500)  # fmt: skip


def test_emotion_over_all_folds_then_evaluate_one_fold_export(emotion_shards, tmp_path):
    out = tmp_path / "emotion"
    done = run("finetune", "--task", "emotion", "--shards", str(emotion_shards), "--scratch", "--out", str(out),
               "--task-setting", "dev_fraction=0.25", *COMMON)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    folds = [s["metrics"] for s in results["splits"]]
    assert [s["split"] for s in results["splits"]] == [f"fold{k}" for k in range(1, 6)]
    assert results["metrics"]["ua"] == pytest.approx(sum(f["ua"] for f in folds) / 5)
    assert (out / "confusion_all_folds.png").is_file() and (out / "fold3" / "confusion.png").is_file()

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("ctal-emotion").experiment_id])
    assert sorted(r.data.tags["fold"] for r in found) == ["all", "fold1", "fold2", "fold3", "fold4", "fold5"]
    # Names a person can tell apart in the MLflow UI: task, variant, fold, seed.
    assert sorted(r.info.run_name for r in found) == [
        f"emotion-scratch-{fold}-seed1234" for fold in ("all", "fold1", "fold2", "fold3", "fold4", "fold5")
    ]
    (summary,) = [r for r in found if r.data.tags["role"] == "result"]
    assert summary.data.metrics["test/ua"] == pytest.approx(results["metrics"]["ua"])
    assert "test/ua_std" in summary.data.metrics and summary.info.run_id == results["run_id"]

    evaluated = run("evaluate", "--task", "emotion", "--model", str(out / "fold3"), "--fold", "3", "--shards",
                    str(emotion_shards), "--task-setting", "dev_fraction=0.25", "--out", str(tmp_path / "eval"),
                    "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scored = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["metrics"]
    assert scored == pytest.approx(results["splits"][2]["metrics"], abs=1e-6)


def test_ablation_with_fractions_writes_one_table_curves_and_a_comparable_store(sentiment_shards, tmp_path):
    torch.manual_seed(0)
    pretrained = CTALForPretraining(CTALConfig.preset("tiny", vocab_size=64)).save_pretrained(
        tmp_path / "pretrained", tokenizer_file=sentiment_shards / "tokenizer.json")
    out = tmp_path / "ablate"
    done = run("ablate", "--task", "sentiment", "--shards", str(sentiment_shards), "--init", str(pretrained),
               "--variants", "pretrained,scratch", "--fractions", "0.5,1", "--out", str(out), *COMMON)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (out / "ablation.md").read_text()
    assert table.count("| pretrained | CTAL |") == 2 and table.count("| scratch | w/o pre-training |") == 2
    assert {p.name for p in (out / "plots").iterdir()} >= {"data_efficiency_sentiment_mae.png"}
    assert json.loads((out / "sentiment" / "scratch-f0.5" / "mosei" / "results.json").read_text())["finished"]

    compared = run("compare", "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--out", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr[-3000:]
    runs, _, summary = compared.stdout.partition("## over seeds")
    for part in (runs, summary):  # one row per run, then one per (variant, fraction) over seeds
        rows = [line for line in part.splitlines() if line.startswith(("| pretrained", "| scratch"))]
        assert len(rows) == 4 and any("| 0.5 |" in r for r in rows)
    assert "| sentiment | 0.5 | pretrained | scratch | mae |" in summary
    assert (tmp_path / "cmp" / "sentiment_mae.png").is_file()


def test_a_bad_configuration_fails_at_once_with_exit_2(sentiment_shards, tmp_path):
    done = run("finetune", "--task", "sentiment", "--shards", str(sentiment_shards), "--out", str(tmp_path))
    assert done.returncode == 2 and "give --init" in done.stderr
    done = run("ablate", "--task", "sentiment", "--shards", str(sentiment_shards), "--variants", "no_mlm",
               "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 2 and "--init-no-mlm" in done.stderr


def test_a_diverging_fine_tune_exits_3_and_its_run_is_marked_failed(sentiment_shards, tmp_path):
    out = tmp_path / "run"
    # lr 1e30: the first update throws the weights to ~1e30, and the next forward pass overflows fp32.
    done = run("finetune", "--task", "sentiment", "--shards", str(sentiment_shards), "--scratch", "--out", str(out),
               *COMMON, "--lr", "1e30")  # fmt: skip
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[ctal-ds] training stopped: non-finite " in done.stderr
    assert "the step was not applied and nothing was saved" in done.stderr
    assert not (out / "results.json").exists() and not (out / "mosei" / "results.json").exists()
    assert latest_complete(out / "mosei" / "checkpoints") is None

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("ctal-sentiment").experiment_id])
    assert found.info.status == "FAILED" and found.data.tags["failure"].startswith("non-finite ")


def test_ablate_over_all_tasks_from_a_shards_root_applies_each_task_option_to_its_task_only(
    sentiment_shards, speaker_shards, tmp_path
):
    import task_shards

    root = tmp_path / "shards"
    # Three dialogues per session: enough for the emotion task's default dev split.
    task_shards.emotion_shards(root / "emotion", dialogues=3)
    (root / "sentiment").symlink_to(sentiment_shards)
    (root / "speaker").symlink_to(speaker_shards)
    out = tmp_path / "ablate"
    done = run("ablate", "--task", "all", "--shards-root", str(root), "--variants", "scratch", "--out", str(out),
               "--n-trials", "30", *COMMON, "--task-option", "emotion:fold=1", "--task-option", "speaker:epochs=2",
               "--task-option", "sentiment:micro_batch_size=2")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (out / "ablation.md").read_text()
    assert all(f"### {task}" in table for task in ("emotion", "sentiment", "speaker")), table

    # emotion:fold=1: IEMOCAP's first fold only, no fold summary.
    assert sorted(p.name for p in (out / "emotion" / "scratch").iterdir() if p.is_dir()) == ["fold1"]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    params = {}
    for task in ("emotion", "sentiment", "speaker"):
        (found,) = client.search_runs([client.get_experiment_by_name(f"ctal-{task}").experiment_id])
        assert found.info.status == "FINISHED", task
        params[task] = found.data.params
        status = json.loads(next((out / task / "scratch").glob("*/status.json")).read_text())
        assert status["finished"] and status["step"] == int(params[task]["run.loop.steps"])
    assert params["emotion"]["run.data.fold"] == "1"
    assert params["sentiment"]["run.data.fold"] == params["speaker"]["run.data.fold"] == "all"
    # speaker:epochs=2 over the shared --epochs 1.
    assert [params[t]["run.epochs"] for t in ("emotion", "sentiment", "speaker")] == ["1", "1", "2"]
    speaker = params["speaker"]
    assert int(speaker["run.loop.steps"]) == 2 * int(speaker["finetune.steps_per_epoch"])
    # sentiment:micro_batch_size=2 over the shared --micro-batch-size 4.
    assert [params[t]["batch.micro"] for t in ("emotion", "sentiment", "speaker")] == ["4", "2", "4"]
