"""launch/prepare_data.py as users run it: a JSONL corpus in, train/valid shard sets out,
``--check`` catching damaged shards, and a build killed part way finished by a rerun."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ctal_ds.data.demo.espeak import ESpeak, VoiceSettings
from ctal_ds.data.shards import read_manifest

REPO = Path(__file__).resolve().parents[2]
WORDS = "north south east west river hill stone bridge market garden window summer".split()
N_UTTERANCES = 24


def run_cli(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "launch" / "prepare_data.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, **popen,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A JSONL manifest of synthesised utterances, one with unreadable audio."""
    root = tmp_path_factory.mktemp("jsonl")
    engine = ESpeak()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(N_UTTERANCES):
        text = " ".join(rng.choice(WORDS, size=4))
        audio = engine.synthesize(text, VoiceSettings("en-us", 260, 40 + i, 50, 100), seed=i)
        sf.write(root / f"utt{i:02d}.wav", audio, engine.sample_rate)
        lines.append({"id": f"utt{i:02d}", "audio": f"utt{i:02d}.wav", "text": text.upper(), "speaker": f"s{i % 4}"})
    (root / "broken.wav").write_bytes(b"RIFF not really a wave file")
    lines.append({"id": "broken", "audio": "broken.wav", "text": "broken", "speaker": "s0"})
    manifest = root / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


BUILD_ARGS = ("--holdout-fraction", "0.25", "--samples-per-shard", "1", "--workers", "1",
              "--vocab-size", "300", "--min-frequency", "1", "--quiet")


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "demo"
    result = run_cli("--corpus", str(corpus), "--out", str(out), *BUILD_ARGS)
    assert result.returncode == 0, result.stderr
    assert "jsonl corpus" in result.stdout and "inputs" in result.stdout  # scan summary
    return out


def keys(shard_dir: Path) -> set[str]:
    names = set()
    for path in shard_dir.glob("shard-*.tar"):
        with tarfile.open(path) as tar:
            names |= {n.split(".")[0] for n in tar.getnames()}
    return names


def test_holdout_builds_train_and_valid_sharing_the_train_tokenizer(built):
    train, valid = read_manifest(built / "train"), read_manifest(built / "valid")
    assert train["tokenizer"] == valid["tokenizer"]
    assert (built / "train" / "tokenizer.json").read_bytes() == (built / "valid" / "tokenizer.json").read_bytes()
    assert train["corpus"]["part"] == "train" and valid["corpus"]["holdout_fraction"] == 0.25
    # Every input in exactly one place: a shard of one set or the rejects of one set.
    assert train["totals"]["inputs"] + valid["totals"]["inputs"] == N_UTTERANCES + 1
    assert train["totals"]["samples"] + valid["totals"]["samples"] == N_UTTERANCES
    assert train["totals"]["rejected"] + valid["totals"]["rejected"] == 1
    assert not keys(built / "train") & keys(built / "valid")
    assert 0 < valid["totals"]["samples"] < N_UTTERANCES / 2


def test_check_passes_on_a_good_build(built):
    result = run_cli("--check", str(built))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": OK") == 2  # train and valid


def test_check_names_corrupt_truncated_and_missing_shards(built, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(built / "train", damaged)
    corrupt = damaged / "shard-000001.tar"
    data = bytearray(corrupt.read_bytes())
    data[700] ^= 0xFF  # inside the first member's bytes
    corrupt.write_bytes(bytes(data))
    truncated = damaged / "shard-000002.tar"
    truncated.write_bytes(truncated.read_bytes()[:1500])
    (damaged / "shard-000003.tar").unlink()

    result = run_cli("--check", str(damaged))

    assert result.returncode == 1
    assert f"{damaged}/shard-000001.tar: sha256 differs" in result.stderr
    assert f"{damaged}/shard-000002.tar: " in result.stderr
    assert f"{damaged}/shard-000003.tar: missing" in result.stderr
    assert "shard-000000.tar" not in result.stderr
    assert "FAILED" in result.stdout


def test_check_fails_where_the_build_did_not_finish(tmp_path):
    result = run_cli("--check", str(tmp_path))
    assert result.returncode == 1 and "manifest.json" in result.stderr


def test_killed_build_resumes_to_the_bytes_of_a_clean_build(corpus, built, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "launch" / "prepare_data.py"), "--corpus", str(corpus),
         "--out", str(out), *BUILD_ARGS],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (out / "train" / "shard-000002.json").exists():
        assert proc.poll() is None, "build ended before it could be killed"
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the build wrote no shard-000002.json within 300 s")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes, mid-build
    proc.wait(timeout=60)
    assert not (out / "train" / "manifest.json").exists()
    finished_before = sorted(p.name for p in (out / "train").glob("shard-*.json"))

    result = run_cli("--corpus", str(corpus), "--out", str(out), *BUILD_ARGS)

    assert result.returncode == 0, result.stderr
    kept = int(result.stdout.split(" written, ")[1].split(" kept")[0])
    assert kept == len(finished_before) >= 3
    for part in ("train", "valid"):
        clean = {p.name: p.read_bytes() for p in (built / part).glob("shard-*.tar")}
        resumed = {p.name: p.read_bytes() for p in (out / part).glob("shard-*.tar")}
        assert resumed == clean
    assert run_cli("--check", str(out)).returncode == 0


def _load_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_data_cli", REPO / "launch" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_max_seconds_defaults_to_the_feature_config_and_keeps_its_old_name():
    from ctal_ds.data.features import FeatureConfig

    cli = _load_cli()
    assert cli.parse_args(["--corpus", "c", "--out", "o"]).max_duration == FeatureConfig().max_duration_s
    assert cli.parse_args(["--corpus", "c", "--out", "o", "--max-seconds", "45"]).max_duration == 45
    assert cli.parse_args(["--corpus", "c", "--out", "o", "--max-duration", "12"]).max_duration == 12


@pytest.fixture(scope="module")
def corpus_with_long_utterances(tmp_path_factory) -> Path:
    """Train and test utterances of 0.5 s, and one of 3 s (train) and 2.5 s (test)."""
    root = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(1)
    seconds = {f"train{i}": 0.5 for i in range(4)} | {f"test{i}": 0.5 for i in range(3)}
    seconds |= {"train-long": 3.0, "test-long": 2.5}
    lines = []
    for utt, length in seconds.items():
        sf.write(root / f"{utt}.wav", 0.1 * rng.standard_normal(int(16000 * length)).astype(np.float32), 16000)
        text = " ".join(rng.choice(WORDS, size=3))
        split = "test" if utt.startswith("test") else "train"
        lines.append({"id": utt, "audio": f"{utt}.wav", "text": text, "speaker": "s0", "split": split})
    manifest = root / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


LONG_ARGS = ("--samples-per-shard", "4", "--workers", "1", "--vocab-size", "300", "--min-frequency", "1", "--quiet")


def test_utterances_over_max_seconds_are_named_per_split_in_a_loud_warning(corpus_with_long_utterances, tmp_path):
    result = run_cli("--corpus", str(corpus_with_long_utterances), "--out", str(tmp_path / "short"),
                     "--max-seconds", "2", *LONG_ARGS)  # fmt: skip

    assert result.returncode == 0, result.stderr
    for stream in (result.stdout, result.stderr):
        assert "WARNING" in stream and "2 utterance(s) longer than --max-seconds 2 were left out" in stream, stream
        assert "split test: 1 left out: test-long" in stream
        assert "split train: 1 left out: train-long" in stream
        assert "rebuild with --max-seconds 3 or more" in stream
    # The warning comes after the summary, where the end of the output shows it.
    assert result.stdout.rstrip().endswith("(the longest lasts 3.00 s)")
    assert read_manifest(tmp_path / "short")["totals"]["samples"] == 7

    kept = run_cli("--corpus", str(corpus_with_long_utterances), "--out", str(tmp_path / "all"),
                   "--max-seconds", "3", *LONG_ARGS)  # fmt: skip
    assert kept.returncode == 0, kept.stderr
    assert "WARNING" not in kept.stdout + kept.stderr
    assert read_manifest(tmp_path / "all")["totals"]["samples"] == 9


def first_train_batches(shard_dir: Path, n: int = 3) -> list[dict]:
    from ctal_ds.data.collate import PretrainCollator
    from ctal_ds.data.loader import BatchConfig, LoaderConfig, build_pretrain_loader
    from ctal_ds.data.masking import MASK_ID, PAD_ID

    collator = PretrainCollator(pad_id=PAD_ID, mask_id=MASK_ID, vocab_size=300, seed=1)
    config = LoaderConfig(batch=BatchConfig(max_frames_per_batch=1500, max_batch_size=4, bucket_buffer=8),
                          num_workers=1, seed=2)  # fmt: skip
    loader = build_pretrain_loader(shard_dir, config, collator)
    batches = list(itertools.islice(iter(loader), n))
    loader.close()
    return batches


def test_compact_feature_encoding_end_to_end_from_cli_to_loader_batches(corpus, built, tmp_path):
    out = tmp_path / "compact"
    result = run_cli("--corpus", str(corpus), "--out", str(out), *BUILD_ARGS, "--feature-encoding", "uint8-logmel")
    assert result.returncode == 0, result.stderr
    for part in ("train", "valid"):
        manifest = read_manifest(out / part)
        assert (manifest["shard_format"], manifest["feature_encoding"]) == (2, "uint8-logmel")
        assert manifest["totals"] == read_manifest(built / part)["totals"]
        # One ~1 s utterance per shard: tar headers and the tar's 10 KiB blocking weigh more
        # here than the features; docs/training.md has the sizes of full shards.
        size = sum(e["bytes"] for e in manifest["shards"])
        assert size < sum(e["bytes"] for e in read_manifest(built / part)["shards"])
    assert read_manifest(built / "train")["feature_encoding"] == "float16-160"  # the default
    check = run_cli("--check", str(out))
    assert check.returncode == 0, check.stderr
    assert check.stdout.count("(uint8-logmel): OK") == 2

    # A worker process decodes the batches: shaped and typed as those of the default
    # encoding, same samples and masks, features within uint8-logmel's error.
    reference = first_train_batches(built / "train")
    for got, want in zip(first_train_batches(out / "train"), reference, strict=True):
        assert got["keys"] == want["keys"]
        for name in ("input_ids", "mlm_labels", "audio_mask", "mcam_mask"):
            assert torch.equal(got[name], want[name]), name
        assert got["audio_feats"].dtype == torch.float32 and got["audio_feats"].shape[-1] == 160
        assert got["audio_feats"].shape == want["audio_feats"].shape
        assert (got["mcam_targets"] - want["mcam_targets"]).abs().max() < 0.06


def test_unknown_feature_encoding_is_refused_at_the_cli_and_in_a_manifest(corpus, built, tmp_path):
    refused = run_cli("--corpus", str(corpus), "--out", str(tmp_path / "x"), "--feature-encoding", "int4")
    assert refused.returncode == 2 and "--feature-encoding" in refused.stderr
    bad = tmp_path / "bad"
    shutil.copytree(built / "valid", bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["feature_encoding"] = "int4-logmel"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("--check", str(bad))
    assert result.returncode == 1
    assert f"{bad}/manifest.json: field feature_encoding: unknown encoding 'int4-logmel'" in result.stderr
