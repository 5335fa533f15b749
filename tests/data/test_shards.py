"""Shard building on a small corpus of synthesised speech with broken inputs mixed in:
accounting, format, determinism across worker counts, and resuming."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from ctal_ds.data import shard_reader, shard_writer
from ctal_ds.data.demo.espeak import ESpeak, VoiceSettings
from ctal_ds.data.features import FeatureConfig
from ctal_ds.data.records import CorpusScan, Record
from ctal_ds.data.shard_check import check_shards
from ctal_ds.data.shard_writer import sample_key
from ctal_ds.data.shards import ShardConfig, build_shards, plan_items, read_manifest, shard_paths
from ctal_ds.data.tokenizer import CTALTokenizer, TokenizerConfig

FEATURES = FeatureConfig(max_duration_s=6.0)
CONFIG = ShardConfig(samples_per_shard=4, workers=2)
TOKENIZER = TokenizerConfig(vocab_size=400, min_frequency=1)
SENTENCES = [
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
    "rice is often served in round bowls",
    "the juice of lemons makes fine punch",
    "the box was thrown beside the parked truck",
    "the hogs were fed chopped corn and garbage",
    "four hours of steady work faced us",
    "a large size in stockings is hard to sell",
    "the boy was there when the sun rose",
    "a rod is used to catch pink salmon",
]
# Expected rejection class of each broken input, by record id (or source).
BROKEN = {
    "missing-file": "unreadable audio",
    "nan-samples": "non-finite audio",
    "too-long": "too long",
    "blank-text": "empty transcript",
    "ls-0002": "duplicate id",
    "transcripts.txt:7": "malformed line",
}


def write_speech(engine: ESpeak, path: Path, text: str, i: int, rate: int, channels: int) -> None:
    voice = ["en-us", "en-us+f2", "en+m3", "en-gb-x-rp"][i % 4]
    x = engine.synthesize(text, VoiceSettings(voice, 150 + 10 * i, 50, 50, 100), seed=i)
    x = x.astype(np.float32) / 32768
    if rate != engine.sample_rate:
        import soxr

        x = soxr.resample(x, engine.sample_rate, rate)
    if channels > 1:
        x = np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1)
    sf.write(path, x, rate)


def make_scan(root: Path) -> CorpusScan:
    root.mkdir(parents=True, exist_ok=True)
    scan = CorpusScan("synthetic", str(root))
    engine = ESpeak()
    for i, text in enumerate(SENTENCES):
        rate = [22050, 44100, 8000, 16000][i % 4]
        path = root / f"ls-{i:04d}.{'flac' if i % 2 else 'wav'}"
        write_speech(engine, path, text, i, rate, channels=2 if i % 3 == 0 else 1)
        # Ids with dots and slashes, as JSONL manifests may hold, next to LibriSpeech ones.
        rid = {5: "utt.five", 6: "utt_five", 7: "dir/utt 7"}.get(i, f"ls-{i:04d}")
        scan.records.append(Record(rid, str(path), text.upper(), f"spk{i % 3}", "train", {"n": i}))
    nan = np.sin(np.arange(16000) / 10).astype(np.float32)
    nan[50] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(root / "long.flac", np.sin(np.arange(16000 * 7) / 10) * 0.1, 16000)
    scan.records += [
        Record("missing-file", str(root / "missing.wav"), "no such file", "spk0", "train"),
        Record("nan-samples", str(root / "nan.wav"), "not a number", "spk0", "train"),
        Record("too-long", str(root / "long.flac"), "seven seconds", "spk0", "train"),
        Record("blank-text", str(root / "ls-0000.wav"), "\u3000\u00a0", "spk0", "train"),
        Record("ls-0002", str(root / "ls-0003.flac"), "duplicate of two", "spk0", "train"),
    ]
    scan.reject("transcripts.txt:7", "malformed line: no id")
    return scan


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusScan:
    return make_scan(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train"
    build_shards(corpus, out, TOKENIZER, FEATURES, CONFIG, progress=False)
    return out


def read_samples(out: Path) -> list[dict]:
    urls = [str(p) for p in shard_paths(out)]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


def test_every_input_is_in_a_shard_or_in_rejects(corpus, built):
    kept = [s["json"]["id"] for s in read_samples(built)]
    refused = {r["id"] or r["source"]: r["reason"].split(":")[0] for r in rejects(built)}
    assert refused == BROKEN
    assert sorted(kept) == sorted(r.id for r in corpus.records[: len(SENTENCES)])
    assert len(kept) + len(refused) == corpus.inputs
    totals = read_manifest(built)["totals"]
    assert (totals["samples"], totals["rejected"], totals["inputs"]) == (12, 6, corpus.inputs)
    assert totals["rejected_by_reason"] == {c: 1 for c in BROKEN.values()}


def test_manifest_counts_and_hashes_match_the_files(built):
    manifest = read_manifest(built)
    samples = read_samples(built)
    assert [s["name"] for s in manifest["shards"]] == [f"shard-{i:06d}.tar" for i in range(4)]
    by_shard: dict[str, list] = {}
    for s in samples:
        by_shard.setdefault(Path(s["__url__"]).name, []).append(s)
    for entry in manifest["shards"]:
        data = (built / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
        mine = by_shard[entry["name"]]
        assert entry["samples"] == len(mine)
        assert entry["frames"] == sum(len(s["feats.npy"]) for s in mine)
        assert entry["seconds"] == pytest.approx(sum(s["json"]["duration_s"] for s in mine))
    tok = manifest["tokenizer"]
    assert tok["file"] == "tokenizer.json"
    assert tok["sha256"] == hashlib.sha256((built / "tokenizer.json").read_bytes()).hexdigest()
    assert tok["vocab_size"] == CTALTokenizer.load(built / "tokenizer.json").vocab_size
    assert manifest["features"] == FEATURES.to_dict()
    assert manifest["totals"]["frames"] == sum(e["frames"] for e in manifest["shards"])
    assert check_shards(built).ok


def test_samples_decode_to_the_contract_types_and_shapes(corpus, built):
    tok = CTALTokenizer.load(built / "tokenizer.json")
    records = {r.id: r for r in corpus.records[: len(SENTENCES)]}
    for s in read_samples(built):
        meta, feats, tokens = s["json"], s["feats.npy"], s["tokens.npy"]
        assert set(s) - {"__key__", "__url__", "__local_path__"} == {"feats.npy", "tokens.npy", "json"}
        assert set(meta) == {"id", "text", "speaker", "split", "duration_s", "n_frames", "source", "labels"}
        record = records[meta["id"]]
        assert s["__key__"] == sample_key(record.id) and "." not in s["__key__"]
        assert feats.dtype == np.float16 and feats.shape == (meta["n_frames"], 160)
        assert meta["n_frames"] == FEATURES.n_frames(round(meta["duration_s"] * 16000))
        assert np.isfinite(feats).all() and abs(float(feats.astype(np.float32).mean())) < 0.01
        assert tokens.dtype == np.int32 and tokens.ndim == 1
        assert tokens.tolist() == tok.encode(record.text)
        assert (meta["text"], meta["speaker"], meta["labels"]) == (record.text, record.speaker, record.labels)
        assert meta["source"] == Path(record.audio).name  # relative to the corpus root


def test_writer_and_loader_agree_on_member_names_and_order(built):
    assert shard_writer.MEMBERS == shard_reader.SAMPLE_MEMBERS
    with tarfile.open(shard_paths(built)[0]) as tar:
        suffixes = [name.split(".", 1)[1] for name in tar.getnames()]
    assert suffixes == list(shard_writer.MEMBERS) * (len(suffixes) // 3)


def test_keys_are_unique_and_dot_free_even_for_colliding_ids(built):
    keys = [s["__key__"] for s in read_samples(built)]
    assert len(set(keys)) == len(keys) == 12
    assert all(k.replace("_", "").replace("-", "").isalnum() for k in keys)
    # "utt.five" and "utt_five" sanitise to the same text; the hash suffix keeps them apart.
    assert "utt_five" in keys and sample_key("utt.five") in keys
    assert sample_key("ls-0001") == "ls-0001"


def test_same_bytes_with_one_or_two_workers(corpus, built, tmp_path):
    one = tmp_path / "one"
    build_shards(corpus, one, TOKENIZER, FEATURES, ShardConfig(samples_per_shard=4, workers=1), progress=False)
    assert tar_bytes(one) == tar_bytes(built)
    for name in ("manifest.json", "rejects.jsonl", "tokenizer.json"):
        assert (one / name).read_bytes() == (built / name).read_bytes(), name


def test_resume_rewrites_only_missing_or_unfinished_shards(corpus, built, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(built, out)
    (out / "shard-000001.tar").unlink()  # lost shard
    (out / "shard-000001.json").unlink()
    tar2 = out / "shard-000002.tar"
    tar2.write_bytes(tar2.read_bytes()[:5000])  # cut short, but its sidecar remains
    # Killed between renaming the tar and writing its sidecar: not trusted.
    (out / "shard-000003.json").unlink()
    (out / "shard-000000.tar.tmp").write_bytes(b"partial")  # a worker killed mid-write
    (out / "shard-000007.tar").write_bytes(b"old")  # from an earlier, bigger build
    (out / "manifest.json").unlink()
    kept = (out / "shard-000000.tar").stat()

    result = build_shards(corpus, out, TOKENIZER, FEATURES, CONFIG, progress=False)

    assert (result.written, result.reused) == ([1, 2, 3], [0])
    assert (out / "shard-000000.tar").stat().st_mtime_ns == kept.st_mtime_ns
    assert tar_bytes(out) == tar_bytes(built)
    assert not list(out.glob("*.tmp")) and not (out / "shard-000007.tar").exists()
    assert (out / "manifest.json").read_bytes() == (built / "manifest.json").read_bytes()
    assert check_shards(out).ok


def test_other_settings_rewrite_every_shard_and_torch_bytes_ignore_workers(corpus, built, tmp_path):
    # Same directory, another backend: no shard of the librosa build may be kept.
    out = tmp_path / "torch2"
    shutil.copytree(built, out)
    torch2 = ShardConfig(samples_per_shard=4, workers=2, backend="torch", batch_size=3)
    result = build_shards(corpus, out, TOKENIZER, FEATURES, torch2, progress=False)
    assert result.written == [0, 1, 2, 3] and result.reused == []
    assert read_manifest(out)["shard_config"]["backend"] == "torch"
    assert all(tar_bytes(out)[n] != b for n, b in tar_bytes(built).items())
    # The torch backend, like librosa, writes the same bytes for any worker count.
    torch1 = dataclasses.replace(torch2, workers=1)
    build_shards(corpus, tmp_path / "torch1", TOKENIZER, FEATURES, torch1, progress=False)
    assert tar_bytes(tmp_path / "torch1") == tar_bytes(out)


def test_audio_that_loads_but_gives_non_finite_features_is_in_rejects(corpus, tmp_path):
    # Float samples of 1e20 are finite, so the file loads, but their power overflows
    # float32 in the STFT and the features come out NaN.
    sf.write(tmp_path / "loud.wav", np.sin(np.arange(16000) / 10) * 1e20, 16000, subtype="FLOAT")
    loud = Record("too-loud", str(tmp_path / "loud.wav"), "far too loud", "spk0", "train")
    scan = CorpusScan(corpus.corpus, corpus.root, [*corpus.records[:2], loud])
    out = tmp_path / "shards"
    build_shards(scan, out, TOKENIZER, FEATURES, ShardConfig(samples_per_shard=4, workers=1), progress=False)
    assert [(r["id"], r["reason"]) for r in rejects(out)] == [("too-loud", "non-finite features")]
    assert sorted(s["json"]["id"] for s in read_samples(out)) == sorted(r.id for r in corpus.records[:2])
    totals = read_manifest(out)["totals"]
    assert (totals["samples"], totals["rejected"], totals["inputs"]) == (2, 1, 3)
    assert check_shards(out).ok


def test_transcripts_over_max_tokens_are_rejected_not_truncated(corpus):
    tok = CTALTokenizer.train([r.text for r in corpus.records], 400, 1)
    items, refused = plan_items(corpus, tok, ShardConfig(max_tokens=14))
    too_many = [r for r in refused if r.reason.startswith("too many tokens")]
    assert too_many and items
    assert all(len(i.tokens) <= 14 for i in items)
    assert all(len(tok.encode(i.record.text)) == len(i.tokens) for i in items)
    assert {r.id for r in too_many} == {r.id for r in corpus.records if len(tok.encode(r.text)) > 14}


def test_shard_assignment_depends_on_records_and_seed_only(corpus):
    tok = CTALTokenizer.train([r.text for r in corpus.records], 400, 1)

    def ids(scan, **changes):
        return [i.record.id for i in plan_items(scan, tok, dataclasses.replace(CONFIG, **changes))[0]]

    reader_order_reversed = CorpusScan(corpus.corpus, corpus.root, corpus.records[::-1], corpus.rejections)
    assert ids(corpus) == ids(corpus) == ids(reader_order_reversed)
    assert ids(corpus, workers=1) == ids(corpus)
    assert ids(corpus, seed=1) != ids(corpus)
    assert ids(corpus, shuffle=False) == sorted(ids(corpus))
