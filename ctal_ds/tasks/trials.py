"""Speaker-verification trial lists: a fixed list of utterance pairs, each labelled
target (same speaker) or non-target, scored once per model (paper section 4.2.3).

File format is VoxCeleb's: one trial a line, ``<label> <path_a> <path_b>``, label 1 for
target and 0 for non-target, paths relative to the corpus root. A fixed file, not a
fresh draw per evaluation, is what makes EERs of different runs comparable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from ctal_ds.data.records import Record


@dataclasses.dataclass(frozen=True)
class Trial:
    label: int  # 1 = target (same speaker), 0 = non-target
    a: str  # utterance ids
    b: str


class TrialFormatError(ValueError):
    """A trial file line that is not ``<0|1> <path_a> <path_b>``; the message names file:line."""


def read_trials(path: str | Path, key: Literal["stem", "path"] = "stem") -> list[Trial]:
    """Trials of a VoxCeleb-format file; blank lines are skipped.

    ``key="stem"`` maps each path to its file stem, which is the utterance id in
    LibriSpeech (``test-clean/1089/134686/1089-134686-0000.flac`` -> ``1089-134686-0000``);
    ``key="path"`` keeps the path as written, for corpora whose stems repeat across
    speakers (VoxCeleb's ``00001.wav``).
    """
    if key not in ("stem", "path"):
        raise ValueError(f"key must be 'stem' or 'path', got {key!r}")
    to_id = (lambda p: PurePosixPath(p).stem) if key == "stem" else (lambda p: p)
    trials = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise TrialFormatError(
                f"{path}:{n}: expected '<label> <path_a> <path_b>', got {len(fields)} field(s): {line!r}"
            )
        if fields[0] not in ("0", "1"):
            raise TrialFormatError(
                f"{path}:{n}: label must be 1 (target) or 0 (non-target), got {fields[0]!r}"
            )
        trials.append(Trial(int(fields[0]), to_id(fields[1]), to_id(fields[2])))
    return trials


def write_trials(
    path: str | Path, trials: Iterable[Trial], path_of: Mapping[str, str] | None = None
) -> None:
    """Write ``trials`` in VoxCeleb format; ``path_of`` maps ids to the paths to write
    (e.g. audio paths relative to the corpus root), else the ids are written."""
    name = (lambda u: u) if path_of is None else (lambda u: path_of[u])
    lines = []
    for t in trials:
        a, b = name(t.a), name(t.b)
        if any(not s or len(s.split()) != 1 for s in (a, b)):
            raise ValueError(f"trial names must be non-empty and without whitespace: {a!r} {b!r}")
        lines.append(f"{t.label} {a} {b}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def make_trials(
    records: Iterable[Record],
    n_target: int,
    n_nontarget: int | None = None,
    seed: int = 0,
    train_speakers: Iterable[str] = (),
) -> list[Trial]:
    """A fixed trial list over ``records`` (the test speakers' utterances).

    Every trial pairs two distinct utterances, no unordered pair appears twice, and
    ``n_nontarget`` defaults to ``n_target`` (a balanced list). Pairs are drawn without
    replacement from all eligible pairs, weighted so that each speaker (target) or
    speaker pair (non-target) is equally likely, so talkative speakers do not dominate.
    A speaker of ``train_speakers`` among the records is an error: the trials must be
    speaker-disjoint from training. The result depends only on the records and the seed.
    Enumerates all utterance pairs: O(N^2) memory, ~3.4M pairs for test-clean.
    """
    n_nontarget = n_target if n_nontarget is None else n_nontarget
    records = sorted(records, key=lambda r: r.id)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("records contain duplicate ids")
    leaked = sorted({r.speaker for r in records} & set(train_speakers))
    if leaked:
        raise ValueError(f"{len(leaked)} trial speaker(s) also in training, e.g. {leaked[0]}")
    index = {s: k for k, s in enumerate(sorted({r.speaker for r in records}))}
    spk = np.array([index[r.speaker] for r in records], dtype=np.int64)
    n_utts = np.bincount(spk).astype(np.float64)
    i, j = np.triu_indices(len(ids), k=1)
    same = spk[i] == spk[j]
    ti, tj, ni, nj = i[same], j[same], i[~same], j[~same]
    rng = np.random.default_rng(seed)
    # Weight 1 / (pairs of that speaker) and 1 / (pairs of that speaker pair).
    target = _weighted_draw(
        rng, n_target, ti, tj, 2.0 / (n_utts[spk[ti]] * (n_utts[spk[ti]] - 1)), "target"
    )
    nontarget = _weighted_draw(
        rng, n_nontarget, ni, nj, 1.0 / (n_utts[spk[ni]] * n_utts[spk[nj]]), "non-target"
    )
    trials = [Trial(1, ids[a], ids[b]) for a, b in target]
    trials += [Trial(0, ids[a], ids[b]) for a, b in nontarget]
    return [trials[k] for k in rng.permutation(len(trials))]


def _weighted_draw(
    rng, n: int, i: np.ndarray, j: np.ndarray, weight: np.ndarray, kind: str
) -> Sequence[tuple[int, int]]:
    """``n`` of the pairs (i, j) without replacement, with probability proportional to
    ``weight`` (Efraimidis-Spirakis: keep the n smallest Exp(1) / weight)."""
    if n < 0 or n > len(i):
        raise ValueError(f"asked for {n} {kind} trials; the records allow 0..{len(i)}")
    keys = rng.exponential(size=len(i)) / weight
    chosen = np.argsort(keys, kind="stable")[:n]
    return list(zip(i[chosen].tolist(), j[chosen].tolist()))
