"""Exports logged as MLflow pyfunc models into a real sqlite store, registered, then loaded
and run in a fresh interpreter: the outputs are those of ``model.embed``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_inputs import TEXTS, tiny_export, voiced
from prerequisites import require_module

from ctal_ds.data.features import FeatureConfig
from ctal_ds.model import CTALForSequenceTask, CTALModel, load_pretrained
from ctal_ds.train.config import TrackingConfig
from ctal_ds.train.tracking import Tracker

mlflow = require_module("mlflow", "a requirement of ctal-ds")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EMOTIONS = ["ang", "hap", "neu", "sad"]

# Loads each model URI given in a fresh interpreter, predicts the rows of a JSON file
# and writes the outputs, with whether DeepSpeed was imported on the way.
CHILD = """
import json, sys
import mlflow, pandas as pd
uri, rows_file, out_file, *models = sys.argv[1:]
mlflow.set_tracking_uri(uri)
rows = pd.DataFrame(json.loads(open(rows_file).read()))
results = {}
for model_uri in models:
    model = mlflow.pyfunc.load_model(model_uri)
    results[model_uri] = {
        "rows": model.predict(rows).to_dict(orient="records"),
        "example": model.predict(pd.DataFrame({"audio": ["input_example.wav"], "text": ["hello there"]}),
                                 params={"batch_size": 1}).to_dict(orient="records"),
        "inputs": [c["name"] for c in model.metadata.get_input_schema().to_dict()],
    }
results["deepspeed_imported"] = "deepspeed" in sys.modules
open(out_file, "w").write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    pretrain = tiny_export(root / "pretrain")
    torch.manual_seed(5)
    task = CTALForSequenceTask.from_pretrained(pretrain, task="classification", num_labels=4)
    with torch.no_grad():  # as fine-tuning would: the backbone's weights move
        for param in task.backbone.parameters():
            param.add_(0.05 * torch.randn_like(param))
    emotion = task.save_pretrained(root / "emotion", tokenizer_file=pretrain / "tokenizer.json",
                                   feature_config=FeatureConfig(), label_names=EMOTIONS)  # fmt: skip
    return {"pretrain": pretrain, "emotion": emotion}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("audio")
    sf.write(root / "a.wav", voiced(0.8, 16000, 130.0, seed=1), 16000)
    sf.write(root / "b.flac", voiced(0.5, 22050, 210.0, seed=2), 22050)
    return [{"audio": str(root / "a.wav"), "text": TEXTS[1]}, {"audio": str(root / "b.flac"), "text": None}]


def wait_for_metric(client, run_id: str, prefix: str, seconds: float = 300) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [k for k in client.get_run(run_id).data.metrics if k.startswith(prefix)]
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"no {prefix}* metric in run {run_id} within {seconds:.0f} s (the system metrics thread)")


def test_exports_logged_registered_and_loaded_in_a_fresh_process_give_embed_outputs(
    exports, rows, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = {}
    for kind, name in (("pretrain", "ctal-tiny"), ("emotion", "ctal-emotion")):
        tracker = Tracker(TrackingConfig(experiment="exp", uri=uri, register_model=name), tmp_path / kind)
        run_id = tracker.start(None, {"run.kind": kind}, {})
        info = tracker.log_model(exports[kind])
        assert info is not None and info.registered_model_version == 1
        if kind == "pretrain":  # MLflow's system metrics, sampled while the run is open
            assert "system/cpu_utilization_percentage" in wait_for_metric(tracker.client, run_id, "system/")
        tracker.finish("FINISHED")
        runs[kind] = run_id

    client = mlflow.MlflowClient(uri)
    for kind, name in (("pretrain", "ctal-tiny"), ("emotion", "ctal-emotion")):
        versions = client.search_model_versions(f"name='{name}'")
        assert [int(v.version) for v in versions] == [1]
        assert versions[0].run_id == runs[kind]
        assert client.get_run(runs[kind]).info.status == "FINISHED"  # logging left the run's status alone

    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows))
    out_file = tmp_path / "out.json"
    uris = ["models:/ctal-tiny/1", f"runs:/{runs['emotion']}/pyfunc"]
    child = subprocess.run([sys.executable, "-c", CHILD, uri, str(rows_file), str(out_file), *uris],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert child.returncode == 0, child.stderr[-4000:]
    results = json.loads(out_file.read_text())
    assert results["deepspeed_imported"] is False

    audio = [r["audio"] for r in rows]
    texts = [r["text"] or "" for r in rows]
    backbone = CTALModel.from_pretrained(exports["pretrain"]).embed(audio=audio, text=texts)
    emotion = load_pretrained(exports["emotion"]).embed(audio=audio, text=texts)
    for model_uri, want in zip(uris, (backbone, emotion)):
        got = results[model_uri]
        assert got["inputs"] == ["audio", "text"]
        assert len(got["rows"]) == 2 and len(got["example"]) == 1
        assert len(got["example"][0]["audio_pooled"]) == 64
        for i, row in enumerate(got["rows"]):
            for field in ("audio_pooled", "text_pooled"):
                np.testing.assert_allclose(row[field], want[field][i].numpy(), atol=1e-5, err_msg=f"{model_uri} {field}")
    pretrain_row, emotion_row = results[uris[0]]["rows"][0], results[uris[1]]["rows"][0]
    assert set(pretrain_row) == {"audio_pooled", "text_pooled"}
    assert set(emotion_row) == {"audio_pooled", "text_pooled", "embedding", "probs", "label", "label_name"}
    for i, row in enumerate(results[uris[1]]["rows"]):
        assert row["label"] == int(emotion["label"][i]) and row["label_name"] == emotion["label_name"][i]
        np.testing.assert_allclose(row["probs"], emotion["probs"][i].numpy(), atol=1e-5)
        np.testing.assert_allclose(row["embedding"], emotion["embedding"][i].numpy(), atol=1e-5)
    # The fine-tuned backbone's own weights ran, not the pre-trained ones.
    assert not np.allclose(results[uris[1]]["rows"][0]["audio_pooled"], pretrain_row["audio_pooled"], atol=1e-4)


def test_a_second_log_registers_version_2_and_a_bad_input_names_its_row(exports, rows, tmp_path, monkeypatch):
    from ctal_ds.model.mlflow_model import log_export

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for load_model's models:/ URI
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    first, second = (client.create_run(experiment).info.run_id for _ in range(2))
    assert log_export(exports["pretrain"], first, uri, "ctal-tiny").registered_model_version == 1
    info = log_export(exports["pretrain"], second, uri, "ctal-tiny")
    assert info.registered_model_version == 2
    # The model lands in the run's experiment and its artifact location, not ./mlruns.
    assert client.get_logged_model(info.model_id).experiment_id == experiment
    assert str(tmp_path / "artifacts") in client.get_logged_model(info.model_id).artifact_location
    model = mlflow.pyfunc.load_model(info.model_uri)
    import pandas as pd

    with pytest.raises(FileNotFoundError, match="row 1: audio file .*nowhere.wav"):
        model.predict(pd.DataFrame({"audio": [rows[0]["audio"], "nowhere.wav"], "text": ["a", "b"]}))
    with pytest.raises(Exception, match="audio"):  # MLflow's schema check or predict's own
        model.predict(pd.DataFrame({"path": [rows[0]["audio"]]}))


def test_log_model_off_logs_nothing_unless_a_name_is_to_be_registered(exports, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    for register, expect_model in ((None, False), ("ctal-tiny", True)):
        cfg = TrackingConfig(experiment="exp", uri=uri, log_model=False, register_model=register, system_metrics=False)
        tracker = Tracker(cfg, tmp_path / str(register))
        run_id = tracker.start(None, {}, {})
        info = tracker.log_model(exports["pretrain"])
        tracker.finish("FINISHED")
        experiment = client.get_run(run_id).info.experiment_id
        models = client.search_logged_models(experiment_ids=[experiment])
        assert (info is not None) is expect_model
        assert [m.source_run_id for m in models if m.source_run_id == run_id] == ([run_id] if expect_model else [])


def test_finetune_logs_its_models_by_default_and_an_ablation_only_when_asked():
    sys.path.insert(0, str(REPO / "launch"))
    try:
        import ablate
    finally:
        sys.path.remove(str(REPO / "launch"))
    from ctal_ds.finetune.cli import build_parser as finetune_parser

    base = ["--task", "emotion", "--shards", "s", "--out", "o", "--scratch"]
    assert finetune_parser().parse_args(base).no_log_model is False
    assert finetune_parser().parse_args([*base, "--no-log-model"]).no_log_model is True
    assert ablate.build_parser().parse_args(["--task", "emotion", "--out", "o"]).no_log_model is True
    assert ablate.build_parser().parse_args(["--task", "emotion", "--out", "o", "--log-models"]).no_log_model is False
