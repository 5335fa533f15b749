"""lhotse manifests written with lhotse's own API over real wav files: read as a corpus,
built into shards by launch/prepare_data.py, segments cut out of longer recordings."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ctal_ds.data.corpora import CorpusError, detect_kind, filter_split, read_corpus, read_lhotse
from ctal_ds.data.features import FeatureConfig, extract
from ctal_ds.data.shards import read_manifest

lhotse = pytest.importorskip("lhotse")

REPO = Path(__file__).resolve().parents[2]
SR = 16000


def write_wav(path: Path, seconds: float, channels: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.2 * np.sin(2 * np.pi * (180 + 40 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    sf.write(path, data.astype(np.float32), SR)
    return path


def reasons(scan) -> dict[str, str]:
    return {(r.id or r.source): r.reason.split(":")[0] for r in scan.rejections}


def append_lines(path: Path, *lines: str) -> None:
    """Lines lhotse would not write: appended to the (gzipped) manifest as they are."""
    with gzip.open(path, "at", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


@pytest.fixture
def manifests(tmp_path) -> dict:
    """A 3 s recording with two supervised segments, a whole-file utterance, a stereo
    recording, a recording whose file is then deleted, one no supervision names, and
    supervisions without recording, text or room in their recording."""
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    audio = tmp_path / "audio"
    audio.mkdir()
    long = Recording.from_file(str(write_wav(audio / "long.wav", 3.0, seed=1)))
    short = Recording.from_file(str(write_wav(audio / "short.wav", 0.8, seed=2)))
    stereo = Recording.from_file(str(write_wav(audio / "stereo.wav", 1.0, channels=2, seed=3)))
    gone = Recording.from_file(str(write_wav(audio / "gone.wav", 1.0, seed=4)))
    unused = Recording.from_file(str(write_wav(audio / "unused.wav", 0.5, seed=5)))
    (audio / "gone.wav").unlink()

    def sup(sid, rec, start, duration, text="hello there", **kw):
        return SupervisionSegment(id=sid, recording_id=rec.id, start=start, duration=duration, channel=0,
                                  text=text, speaker=kw.pop("speaker", "spk1"), language="en", **kw)  # fmt: skip

    supervisions = [
        sup("long-a", long, 0.25, 1.0, "the first part", speaker="anna", custom={"emotion": "hap", "split": "dev"}),
        sup("long-b", long, 1.5, 1.25, "and the second", speaker="bob", gender="M"),
        sup("short-0", short, 0.0, short.duration, "all of it", custom={"sentiment": 1.5}),
        sup("stereo-0", stereo, 0.0, 1.0, "two channels"),
        sup("gone-0", gone, 0.0, 1.0, "file deleted"),
        sup("long-empty", long, 2.5, 0.4, "   "),
        sup("long-past-end", long, 2.5, 1.0, "runs past the end"),
    ]
    orphan = SupervisionSegment(id="orphan", recording_id="no-such-recording", start=0, duration=1, text="x")
    recordings = RecordingSet.from_recordings([long, short, stereo, gone, unused])
    sups = SupervisionSet.from_segments([*supervisions, orphan])
    rec_file = tmp_path / "corpus_recordings_train.jsonl.gz"
    sup_file = tmp_path / "corpus_supervisions_train.jsonl.gz"
    recordings.to_file(rec_file)
    sups.to_file(sup_file)
    return {"dir": tmp_path, "recordings": recordings, "supervisions": sups,
            "rec_file": rec_file, "sup_file": sup_file}  # fmt: skip


def test_recording_and_supervision_sets_become_records_and_rejections(manifests):
    sup_file = manifests["sup_file"]
    append_lines(sup_file, "{not json", json.dumps(["a", "list"]))
    scan = read_lhotse(sup_file)
    records = {r.id: r for r in scan.records}
    assert set(records) == {"long-a", "long-b", "short-0"}
    a, b, whole = records["long-a"], records["long-b"], records["short-0"]
    assert (a.text, a.speaker, a.split, a.offset, a.duration) == ("the first part", "anna", "dev", 0.25, 1.0)
    assert a.labels == {"language": "en", "emotion": "hap"}
    assert Path(a.audio).name == "long.wav" and Path(a.audio).is_absolute()
    assert (b.speaker, b.split, b.labels, b.offset, b.duration) == ("bob", "train", {"language": "en", "gender": "M"},
                                                                   1.5, 1.25)  # fmt: skip
    # A supervision spanning its whole recording is the whole file, not a segment.
    assert (whole.offset, whole.duration, whole.segment) == (0.0, None, None)
    assert whole.labels["sentiment"] == 1.5

    got = reasons(scan)
    assert got["stereo-0"] == "multi-channel audio"
    assert got["gone-0"] == "missing audio"
    assert got["long-empty"] == "empty transcript"
    assert got["long-past-end"] == "bad segment"
    assert got["orphan"] == "missing audio" and "no-such-recording" in next(
        r.reason for r in scan.rejections if r.id == "orphan")
    assert got["unused"] == "missing transcript"
    malformed = {r.source for r in scan.rejections if r.reason.startswith("malformed line")}
    assert malformed == {f"{sup_file}:9", f"{sup_file}:10"}
    # Every rejection names its manifest file and line.
    for r in scan.rejections:
        path, _, line = r.source.rpartition(":")
        assert Path(path) in (sup_file, manifests["rec_file"]) and line.isdigit(), r
    # 8 supervisions + 2 bad lines + 1 recording nobody names.
    assert len(scan.records) + len(scan.rejections) == scan.inputs == 11, scan.summary()


def test_a_recordings_file_a_folder_and_auto_detection_read_the_same_pair(manifests):
    by_sup = read_lhotse(manifests["sup_file"])
    for path in (manifests["rec_file"], manifests["dir"]):
        assert detect_kind(path) == "lhotse"
        scan = read_corpus(path)
        assert scan.corpus == "lhotse"
        assert scan.records == by_sup.records and len(scan.rejections) == len(by_sup.rejections)
    assert [r.id for r in filter_split(by_sup, ["dev"]).records] == ["long-a"]
    # A plain JSONL manifest stays one, whatever its name or extra keys.
    plain = manifests["dir"] / "my_supervisions.jsonl"
    plain.write_text(json.dumps({"id": "u", "audio": "a.wav", "text": "hi", "recording_id": "r", "start": 0,
                                 "duration": 1}) + "\n")  # fmt: skip
    assert detect_kind(plain) == "jsonl"
    plain.unlink()
    # A lone supervisions file cannot be read: its audio is in the missing partner.
    manifests["rec_file"].unlink()
    with pytest.raises(CorpusError, match="corpus_recordings_train.jsonl"):
        read_corpus(manifests["sup_file"])


def test_cut_sets_give_the_records_of_their_supervisions(manifests):
    from lhotse import CutSet

    cuts = CutSet.from_manifests(recordings=manifests["recordings"], supervisions=manifests["supervisions"])
    full = manifests["dir"] / "cuts" / "full_cuts.jsonl.gz"
    trimmed = manifests["dir"] / "cuts" / "trimmed_cuts.jsonl"
    full.parent.mkdir()
    cuts.to_file(full)
    cuts.trim_to_supervisions(keep_overlapping=False, keep_all_channels=True).to_file(trimmed)
    pair = read_lhotse(manifests["sup_file"])
    want = {r.id: (r.audio, r.text, r.speaker, r.labels, r.offset, r.duration) for r in pair.records}
    for path in (full, trimmed):
        assert detect_kind(path) == "lhotse"
        scan = read_corpus(path)
        got = {r.id: (r.audio, r.text, r.speaker, r.labels, r.offset, r.duration) for r in scan.records}
        assert got == want, path
        assert reasons(scan)["stereo-0"] == "multi-channel audio"  # a MultiCut
        assert sum(r.reason.startswith("empty transcript") for r in scan.rejections) == 1
        assert len(scan.records) + len(scan.rejections) == scan.inputs
    # The recording without supervisions is a cut without supervisions.
    lone = [r for r in read_corpus(full).rejections if r.reason.startswith("missing transcript")]
    assert len(lone) == 1 and lone[0].id.startswith("unused"), lone
    with pytest.raises(CorpusError, match="both cut manifests"):
        (manifests["dir"] / "cuts" / "x_recordings.jsonl").write_text("")
        read_corpus(manifests["dir"] / "cuts")


def sample_features(shard_dir: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """sample id -> (metadata, stored features) of every shard in ``shard_dir``."""
    out = {}
    for path in sorted(shard_dir.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[: -len(".json")]
                meta = json.loads(data)
                out[meta["id"]] = (meta, np.load(io.BytesIO(members[f"{key}.feats.npy"])))
    return out


@pytest.mark.slow
def test_prepare_data_builds_shards_of_segments_equal_to_the_cut_out_audio(manifests, tmp_path):
    from lhotse import CutSet

    cuts = CutSet.from_manifests(recordings=manifests["recordings"], supervisions=manifests["supervisions"])
    cuts_file = manifests["dir"] / "corpus_cuts_train.jsonl.gz"
    trimmed = cuts.trim_to_supervisions(keep_overlapping=False, keep_all_channels=True)
    trimmed.to_file(cuts_file)
    append_lines(cuts_file, "garbage")  # lhotse's CutSet.from_file fails on it
    out = tmp_path / "shards"
    result = subprocess.run(
        [sys.executable, str(REPO / "launch" / "prepare_data.py"), "--corpus", str(cuts_file), "--out", str(out),
         "--samples-per-shard", "2", "--workers", "1", "--vocab-size", "300", "--min-frequency", "1", "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "lhotse corpus" in result.stdout
    totals = read_manifest(out)["totals"]
    # 7 cuts (the orphan supervision and the unused recording are in none; lhotse trims the
    # supervision running past the end out of its cut) and a garbage line: 3 samples.
    assert (totals["inputs"], totals["samples"], totals["rejected"]) == (8, 3, 5)
    assert totals["rejected_by_reason"] == {"empty transcript": 1, "malformed line": 1, "missing audio": 1,
                                            "missing transcript": 1, "multi-channel audio": 1}  # fmt: skip
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert all(r["source"].startswith(f"{cuts_file}:") for r in rejects)

    samples = sample_features(out)
    assert set(samples) == {"long-a", "long-b", "short-0"}
    by_id = {c.supervisions[0].id: c for c in trimmed if c.supervisions}
    config = FeatureConfig()
    for utt, (meta, feats) in samples.items():
        wave = by_id[utt].load_audio()[0]  # lhotse's own cut of the recording
        want = extract(wave.astype(np.float32), config).astype(np.float16)
        assert feats.shape == want.shape, utt
        np.testing.assert_array_equal(feats, want, err_msg=utt)
        assert meta["duration_s"] == pytest.approx(len(wave) / SR)
    assert samples["long-a"][0]["segment"] == [0.25, 1.0]
    assert "segment" not in samples["short-0"][0]
    # The segment is not the whole file: its features differ from those of long.wav.
    whole = extract(sf.read(manifests["dir"] / "audio" / "long.wav", dtype="float32")[0], config)
    assert samples["long-a"][1].shape[0] < whole.shape[0]
    check = subprocess.run([sys.executable, str(REPO / "launch" / "prepare_data.py"), "--check", str(out)],
                           capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert check.returncode == 0, check.stderr
