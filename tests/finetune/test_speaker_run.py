"""A speaker-verification fine-tune end to end: trial list, export, evaluation without
DeepSpeed and inside an engine, MLflow store, compare.py."""

from __future__ import annotations

import json

import finetune_runs as runs
import pytest

from ctal_ds.finetune.evaluate import EvalConfig, evaluate
from ctal_ds.finetune.reports import ReportSettings
from ctal_ds.finetune.run import finetune
from ctal_ds.tasks.trials import read_trials


@pytest.fixture(scope="module")
def speaker_run(speaker_shards, tmp_path_factory, process_group):
    out = tmp_path_factory.mktemp("speaker") / "run"
    cfg = runs.finetune_config("speaker", speaker_shards, out, "--epochs", "2", "--variant", "tiny-scratch",
                               "--task-setting", "dev_fraction=0.2", "--n-trials", "30",
                               "--register-model", "ctal-speaker")  # fmt: skip
    return finetune(cfg, process_group), out


def test_speaker_run_scores_a_fixed_speaker_disjoint_trial_list_of_test_utterances(speaker_run, speaker_shards):
    result, out = speaker_run
    (split,) = result.splits
    trials = read_trials(split.details["trials"])
    test_ids = {f"{900 + k}-1-{u:04d}" for k in range(3) for u in range(8)}
    assert split.details["trials"] == str(out / "librispeech" / "trials.txt")
    assert {u for t in trials for u in (t.a, t.b)} <= test_ids  # unseen test-clean speakers only
    assert sum(t.label for t in trials) == 30 and len(trials) == 60
    assert all((t.a.split("-")[0] == t.b.split("-")[0]) == bool(t.label) for t in trials)
    assert {"eer", "min_dcf", "centroid_eer"} <= set(result.metrics)
    assert (out / "librispeech" / "tsne.png").is_file()


def test_exported_model_evaluated_without_deepspeed_scores_what_the_run_reported(speaker_run, speaker_shards,
                                                                                  tmp_path, process_group):  # fmt: skip
    result, out = speaker_run
    cfg = EvalConfig("speaker", speaker_shards, out / "librispeech" / "export", tmp_path / "eval",
                     report=ReportSettings(n_target_trials=30, centroid_enrol=3))  # fmt: skip
    report, _ = evaluate(cfg, process_group)
    for key in ("eer", "min_dcf", "centroid_eer"):
        assert report.metrics[key] == pytest.approx(result.metrics[key], abs=1e-6)
    assert (tmp_path / "eval" / "trials.txt").read_text() == (out / "librispeech" / "trials.txt").read_text()


def test_evaluation_inside_a_deepspeed_engine_gives_the_same_numbers(speaker_run, speaker_shards, tmp_path,
                                                                     process_group):  # fmt: skip
    result, out = speaker_run
    cfg = EvalConfig("speaker", speaker_shards, out / "librispeech", tmp_path / "eval",
                     report=ReportSettings(n_target_trials=30, centroid_enrol=3), deepspeed_config=runs.DS_CONFIG)  # fmt: skip
    report, _ = evaluate(cfg, process_group)
    assert report.metrics["eer"] == pytest.approx(result.metrics["eer"], abs=1e-6)
    dev = evaluate(EvalConfig("speaker", speaker_shards, out / "librispeech" / "export", tmp_path / "dev",
                              part="dev", task_settings={"dev_fraction": 0.2}), process_group)[0]  # fmt: skip
    assert dev.metrics["accuracy"] == result.splits[0].selection["best_value"]


def test_the_run_is_tracked_with_its_grouping_tags_metrics_and_artifacts(speaker_run):
    from mlflow import MlflowClient

    result, out = speaker_run
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ctal-speaker").experiment_id])
    tags, metrics = run.data.tags, run.data.metrics
    assert (tags["task"], tags["variant"], tags["init"], tags["fold"], tags["role"]) == (
        "speaker", "tiny-scratch", "scratch", "librispeech", "result")
    assert run.info.run_name == f"speaker-tiny-scratch-librispeech-seed{tags['seed']}"
    assert run.info.status == "FINISHED" and metrics["test/eer"] == pytest.approx(result.metrics["eer"])
    dev_steps = [m.step for m in client.get_metric_history(run.info.run_id, "dev/accuracy")]
    assert len(dev_steps) == 2 and dev_steps[1] == 2 * dev_steps[0]  # one dev evaluation per epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "results")}
    assert {"results/trials.txt", "results/tsne.png", "results/results.json"} <= artifacts
    assert json.loads((out / "results.json").read_text())["run_id"] == run.info.run_id


def test_the_export_is_logged_into_the_run_as_a_registered_pyfunc_model(speaker_run, monkeypatch):
    """Registration and the logged files; tests/model/test_mlflow_model.py runs predict (the
    task shards here hold a placeholder tokenizer.json, which no processor can read)."""
    import mlflow

    _, out = speaker_run
    uri = f"sqlite:///{out / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ctal-speaker").experiment_id])
    (version,) = client.search_model_versions("name='ctal-speaker'")
    assert (int(version.version), version.run_id) == (1, run.info.run_id)
    model = mlflow.pyfunc.load_model("models:/ctal-speaker/1")
    outputs = [c["name"] for c in model.metadata.get_output_schema().to_dict()]
    assert outputs == ["audio_pooled", "text_pooled", "embedding", "probs", "label", "label_name", "speaker_embedding"]
    export = out / "librispeech" / "export"
    logged = model.unwrap_python_model().model.pretrained_dir
    assert sorted(p.name for p in logged.iterdir()) == sorted(p.name for p in export.iterdir())
    assert (logged / "model.safetensors").read_bytes() == (export / "model.safetensors").read_bytes()


def test_compare_prints_the_runs_of_the_store(speaker_run, tmp_path, capsys):
    _, out = speaker_run
    assert runs.launch_script("compare").main(["--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "### speaker" in printed and "| tiny-scratch | scratch | librispeech | 1 | finished |" in printed
    assert (tmp_path / "comparison.csv").is_file() and (tmp_path / "speaker_eer.png").is_file()
