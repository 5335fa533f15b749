"""launch/embed.py as users run it: a folder with a corrupt file, a JSONL manifest with a
missing one, nothing usable at all, and a fine-tuned export's task outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from audio_inputs import TEXTS, tiny_export, voiced

from ctal_ds.data.features import FeatureConfig
from ctal_ds.model import CTALForSequenceTask, CTALModel

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / "embed.py"), *args, "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("pretrain") / "export")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """a.wav with a.txt, sub/b.flac without a transcript, c.wav that is no audio file."""
    root = tmp_path_factory.mktemp("recordings")
    (root / "sub").mkdir()
    sf.write(root / "a.wav", voiced(0.7, 16000, 130.0, seed=1), 16000)
    (root / "a.txt").write_text(TEXTS[1] + "\n")
    sf.write(root / "sub" / "b.flac", voiced(0.5, 22050, 220.0, seed=2), 22050)
    (root / "c.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE this is not audio")
    (root / "notes.md").write_text("not an input")
    return root


def test_a_folder_is_embedded_and_the_corrupt_file_reported(export, folder, tmp_path):
    out = tmp_path / "emb.parquet"
    done = run_cli("--model", str(export), "--audio-dir", str(folder), "--out", str(out), "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    assert "embedded 2 of 3 inputs" in done.stdout
    assert "rejected c" in done.stderr and "unreadable audio" in done.stderr
    (reject,) = [json.loads(line) for line in (tmp_path / "emb.rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "c" and reject["reason"].startswith("unreadable audio")

    table = pq.read_table(out).to_pylist()
    assert [row["id"] for row in table] == ["a", "sub/b"]
    assert [row["text"] for row in table] == [TEXTS[1], ""]
    model = CTALModel.from_pretrained(export)
    for row, path, text in zip(table, [folder / "a.wav", folder / "sub" / "b.flac"], [TEXTS[1], None]):
        alone = model.embed(audio=path, text=text)
        for field in ("audio_pooled", "text_pooled"):
            assert len(row[field]) == 64
            np.testing.assert_allclose(row[field], alone[field].numpy(), atol=1e-5)


def test_a_manifest_with_a_missing_file_gives_one_array_and_its_ids(export, folder, tmp_path):
    manifest = tmp_path / "utts.jsonl"
    lines = [
        {"id": "first", "audio": str(folder / "a.wav"), "text": TEXTS[0]},
        {"id": "gone", "audio": "nowhere/gone.wav", "text": "missing"},
        {"id": "second", "audio": str(folder / "sub" / "b.flac")},
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{not json\n")
    out = tmp_path / "emb.npy"
    done = run_cli("--model", str(export), "--manifest", str(manifest), "--out", str(out), "--quiet",
                   "--fields", "text_pooled")  # fmt: skip
    assert done.returncode == 0, done.stderr
    array = np.load(out)
    assert array.shape == (2, 64) and array.dtype == np.float32
    assert (tmp_path / "emb.ids.txt").read_text().splitlines() == ["first", "second"]
    rejects = [json.loads(line) for line in (tmp_path / "emb.rejects.jsonl").read_text().splitlines()]
    reasons = sorted(r["reason"].split(":")[0] for r in rejects)
    assert reasons == ["malformed line", "missing audio"]
    assert "missing audio" in done.stderr and "gone" in done.stderr
    expected = CTALModel.from_pretrained(export).embed(audio=folder / "a.wav", text=TEXTS[0])["text_pooled"]
    np.testing.assert_allclose(array[0], expected.numpy(), atol=1e-5)


def test_nothing_usable_exits_non_zero_with_a_clear_message(export, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"garbage")
    (bad / "y.flac").write_bytes(b"")
    out = tmp_path / "none.parquet"
    done = run_cli("--model", str(export), "--audio-dir", str(bad), "--out", str(out))
    assert done.returncode == 1
    assert "nothing embedded: all 2 inputs" in done.stderr
    assert not out.exists() and len((tmp_path / "none.rejects.jsonl").read_text().splitlines()) == 2


def test_a_fine_tuned_export_writes_its_task_outputs(export, folder, tmp_path):
    """In this process (launch/embed.py's main), to spare a second interpreter start."""
    import importlib.util

    torch.manual_seed(3)
    task = CTALForSequenceTask.from_pretrained(export, task="classification", num_labels=4)
    ft = task.save_pretrained(tmp_path / "ft", tokenizer_file=export / "tokenizer.json",
                              feature_config=FeatureConfig(), label_names=["ang", "hap", "neu", "sad"])  # fmt: skip
    spec = importlib.util.spec_from_file_location("launch_embed", REPO / "launch" / "embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "ft.parquet"
    assert module.main(["--model", str(ft), "--audio-dir", str(folder), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    rows = pq.read_table(out).to_pylist()
    assert {"audio_pooled", "text_pooled", "embedding", "probs", "label", "label_name"} <= set(rows[0])
    for row in rows:
        assert row["label_name"] == ["ang", "hap", "neu", "sad"][row["label"]]
        assert sum(row["probs"]) == pytest.approx(1.0, abs=1e-5) and len(row["embedding"]) == 128
    with pytest.raises(SystemExit) as stop:  # .npy holds one vector field
        module.main(["--model", str(ft), "--audio-dir", str(folder), "--out", str(tmp_path / "x.npy"),
                     "--fields", "audio_pooled,label"])  # fmt: skip
    assert stop.value.code == 2


@pytest.mark.slow
def test_lhotse_manifests_embed_each_supervision_with_its_text(export, tmp_path):
    lhotse = pytest.importorskip("lhotse")
    long = tmp_path / "long.wav"
    sf.write(long, voiced(2.0, 16000, 150.0, seed=4), 16000)
    sf.write(tmp_path / "stereo.wav", np.stack([voiced(0.6, 16000, 200.0, seed=5)] * 2, axis=1), 16000)
    rec = lhotse.Recording.from_file(str(long))
    stereo = lhotse.Recording.from_file(str(tmp_path / "stereo.wav"))
    sups = [
        lhotse.SupervisionSegment("seg-a", rec.id, start=0.2, duration=0.7, channel=0, text=TEXTS[0], speaker="x"),
        lhotse.SupervisionSegment("seg-b", rec.id, start=1.0, duration=0.9, channel=0, text=TEXTS[1], speaker="y"),
        lhotse.SupervisionSegment("two", stereo.id, start=0.0, duration=0.6, channel=0, text=TEXTS[2]),
        lhotse.SupervisionSegment("orphan", "nowhere", start=0.0, duration=0.5, channel=0, text="lost"),
    ]
    recordings = lhotse.RecordingSet.from_recordings([rec, stereo])
    supervisions = lhotse.SupervisionSet.from_segments(sups)
    recordings.to_file(tmp_path / "x_recordings.jsonl.gz")
    supervisions.to_file(tmp_path / "x_supervisions.jsonl.gz")
    cuts = lhotse.CutSet.from_manifests(recordings=recordings, supervisions=supervisions).trim_to_supervisions(
        keep_overlapping=False, keep_all_channels=True)
    (tmp_path / "cuts").mkdir()
    cuts.to_file(tmp_path / "cuts" / "x_cuts.jsonl")

    out = tmp_path / "pair.parquet"
    done = run_cli("--model", str(export), "--lhotse", str(tmp_path / "x_supervisions.jsonl.gz"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "embedded 2 of 4 inputs" in done.stdout
    rejects = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "pair.rejects.jsonl").read_text().splitlines())}
    assert rejects["two"].startswith("multi-channel audio") and rejects["orphan"].startswith("missing audio")
    assert "x_supervisions.jsonl.gz:" in rejects["orphan"]  # file and line
    rows = pq.read_table(out).to_pylist()
    assert [(r["id"], r["text"], r["offset"], r["duration"]) for r in rows] == [
        ("seg-a", TEXTS[0], 0.2, 0.7), ("seg-b", TEXTS[1], 1.0, 0.9)]

    model = CTALModel.from_pretrained(export)
    by_id = {c.supervisions[0].id: c for c in cuts}
    for row in rows:
        wave = by_id[row["id"]].load_audio()[0]  # lhotse's own cut of the recording
        alone = model.embed(audio=wave, sampling_rate=16000, text=row["text"])
        for field in ("audio_pooled", "text_pooled"):
            np.testing.assert_allclose(row[field], alone[field].numpy(), atol=1e-5)
    whole = model.embed(audio=long, text=TEXTS[0])["audio_pooled"].numpy()
    assert not np.allclose(rows[0]["audio_pooled"], whole, atol=1e-3)  # a segment, not the file

    # A cut set given as --manifest is detected as lhotse and gives the same rows.
    cut_out = tmp_path / "cuts.parquet"
    done = run_cli("--model", str(export), "--manifest", str(tmp_path / "cuts" / "x_cuts.jsonl"), "--out", str(cut_out))
    assert done.returncode == 0, done.stderr
    cut_rows = pq.read_table(cut_out).to_pylist()
    assert [r["id"] for r in cut_rows] == ["seg-a", "seg-b"]
    for got, want in zip(cut_rows, rows):
        np.testing.assert_allclose(got["audio_pooled"], want["audio_pooled"], atol=1e-6)
