"""Task shard sets written on the fly: the shard layout of docs/contracts.md, with labels.

The audio carries the label (a class- or score-dependent offset in the first feature
dimensions, plus noise), so a tiny model learns it in a few epochs; token ids are
random, so the text carries nothing. A fake ``tokenizer.json`` stands for the
vocabulary (fine-tuning only reads its size from the manifest and its hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import webdataset as wds

FEAT_DIM = 160
VOCAB_SIZE = 64
EMOTIONS = ("ang", "hap", "neu", "sad")


def write_task_shards(directory: Path, metas: Sequence[dict], signal: Sequence[float], samples_per_shard: int = 16,
                      seed: int = 0) -> Path:  # fmt: skip
    """Shards of ``metas`` (sample JSONs without n_frames); ``signal[i]`` shifts sample i's
    first 8 feature dimensions."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = directory / "tokenizer.json"
    tokenizer.write_text(json.dumps({"fake": "tokenizer", "vocab": VOCAB_SIZE}))
    entries = []
    for start in range(0, len(metas), samples_per_shard):
        path = directory / f"shard-{start // samples_per_shard:06d}.tar"
        frames = 0
        with wds.TarWriter(str(path)) as writer:
            for meta, shift in zip(metas[start : start + samples_per_shard], signal[start : start + samples_per_shard]):
                n = int(rng.integers(12, 40))
                feats = rng.standard_normal((n, FEAT_DIM)).astype(np.float32)
                feats[:, :8] += shift
                tokens = np.concatenate([[0], rng.integers(5, VOCAB_SIZE, int(rng.integers(3, 10))), [2]])
                writer.write({
                    "__key__": meta["id"].replace(".", "_"),
                    "feats.npy": _npy(feats.astype(np.float16)),
                    "tokens.npy": _npy(tokens.astype(np.int32)),
                    "json": json.dumps({"text": "words", "duration_s": n * 0.0125, "n_frames": n,
                                        "source": f"{meta['split']}/{meta['id']}.wav", **meta}).encode(),
                })  # fmt: skip
                frames += n
        entries.append({"name": path.name, "samples": len(metas[start : start + samples_per_shard]), "frames": frames,
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})  # fmt: skip
    manifest = {
        "shards": entries,
        "features": {"sample_rate": 16000, "hop_length": 200, "win_length": 800, "max_duration_s": 30.0},
        "tokenizer": {"file": "tokenizer.json", "vocab_size": VOCAB_SIZE,
                      "sha256": hashlib.sha256(tokenizer.read_bytes()).hexdigest()},
        "totals": {"samples": len(metas), "shards": len(entries)},
    }  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return directory


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def emotion_shards(directory: Path, sessions: int = 5, dialogues: int = 2, turns: int = 8,
                   misleading_dev_of: str | None = None) -> Path:  # fmt: skip
    """IEMOCAP-like: sessions x dialogues x turns, emotions cycling within each dialogue.

    ``misleading_dev_of`` (a fold name): the audio of that fold's dev utterances carries
    another class than their label, so the better a model learns the training data,
    the worse it does on that dev split, while its test split stays honest.
    """
    metas, classes = [], []
    for s in range(1, sessions + 1):
        for d in range(1, dialogues + 1):
            for t in range(turns):
                emotion = EMOTIONS[(t + d) % 4]
                gender = "FM"[t % 2]
                metas.append({"id": f"Ses0{s}F_impro0{d}_{gender}{t:03d}", "speaker": f"Ses0{s}_{gender}",
                              "split": f"Session{s}", "labels": {"emotion": emotion, "session": s}})  # fmt: skip
                classes.append(EMOTIONS.index(emotion))
    if misleading_dev_of is not None:
        from ctal_ds.data.records import Record
        from ctal_ds.tasks import EmotionTask

        records = [Record(m["id"], "", "words", m["speaker"], m["split"], m["labels"]) for m in metas]
        (fold,) = [f for f in EmotionTask(dev_fraction=0.25).splits(records) if f.name == misleading_dev_of]
        classes = [(c + 2) % 4 if m["id"] in fold.dev else c for m, c in zip(metas, classes)]
    return write_task_shards(directory, metas, [1.5 * c - 2.0 for c in classes])


def sentiment_shards(directory: Path, counts: dict[str, int] | None = None) -> Path:
    """MOSEI-like: scores in [-3, 3] carried by the audio; train / valid / test."""
    counts = counts or {"train": 48, "valid": 16, "test": 16}
    rng = np.random.default_rng(1)
    metas, signal = [], []
    for split, n in counts.items():
        for i in range(n):
            score = float(np.round(rng.uniform(-3, 3), 2)) or 0.5
            metas.append({"id": f"{split}vid{i // 4}_{i % 4}", "speaker": f"{split}vid{i // 4}", "split": split,
                          "labels": {"sentiment": score}})  # fmt: skip
            signal.append(score)
    return write_task_shards(directory, metas, signal)


def speaker_shards(directory: Path, train_speakers: int = 4, test_speakers: int = 3, utts: int = 8) -> Path:
    """LibriSpeech-like: train-clean speakers for the classifier, unseen test-clean speakers."""
    metas, signal = [], []
    for subset, speakers, offset in (("train-clean", train_speakers, 100), ("test-clean", test_speakers, 900)):
        for k in range(speakers):
            spk = str(offset + k)
            for u in range(utts):
                metas.append({"id": f"{spk}-1-{u:04d}", "speaker": spk, "split": subset, "labels": {"gender": "F"}})
                signal.append(2.0 * (k - speakers / 2))
    return write_task_shards(directory, metas, signal)
