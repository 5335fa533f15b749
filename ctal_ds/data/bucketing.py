"""Cutting samples into batches under a padded-frame budget.

A batch costs memory in proportion to ``batch size x longest utterance``
(everything is padded to the longest), so the budget bounds exactly that
product. Sorting a buffer of samples by length before cutting puts utterances
of similar length together, which keeps the padding low; without sorting the
same budget is spent largely on zeros (see ``benchmarks/loader.py``).

All functions here are pure: given the same lengths they give the same plan,
which the loader relies on for deterministic resume and for equal batch
counts across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence


def cut_under_budget(lengths: Sequence[int], max_frames: int, max_batch: int) -> list[list[int]]:
    """Greedily cut positions ``0..n-1`` in order into batches.

    A batch grows while ``(size + 1) * longest <= max_frames`` and
    ``size < max_batch``. A single sample longer than the budget becomes a batch
    of one: dropping it silently would bias the data, so the budget must be set
    above the longest utterance (the loader's config says so).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        grown = max(longest, n)
        if current and (len(current) >= max_batch or (len(current) + 1) * grown > max_frames):
            batches.append(current)
            current, grown = [], n
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


def plan_batches(
    lengths: Sequence[int], max_frames: int, max_batch: int, sort: bool = True
) -> list[list[int]]:
    """Batches of indices into ``lengths``; sorted by length first when ``sort``.

    Ties are broken by index so the plan depends on nothing but the input.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i)) if sort else list(range(len(lengths)))
    cuts = cut_under_budget([lengths[i] for i in order], max_frames, max_batch)
    return [[order[j] for j in batch] for batch in cuts]


def plan_dealt_batches(
    lengths: Sequence[int], world_size: int, max_frames: int, max_batch: int, sort: bool = True
) -> list[list[list[int]]]:
    """Batches for ``world_size`` ranks that all see the same ``lengths``.

    The (optionally sorted) samples are dealt in rows of ``world_size``: row
    ``[a, b, c]`` gives ``a`` to rank 0, ``b`` to rank 1, ``c`` to rank 2. Rows
    are cut under the budget by their longest member, so every rank's batch fits
    the budget, and every rank gets the same number of batches: each batch is
    a run of rows, and each rank has a member in every full row.

    Only the last row may be short (``len(lengths)`` not a multiple of the world
    size). If it would form a batch on its own, ranks without a member would get
    an empty batch, so it joins the previous batch instead, which may then pass
    the budget by that one row. Needs ``len(lengths) >= world_size``.

    Returns batches of rows of indices into ``lengths``.
    """
    if len(lengths) < world_size:
        raise ValueError(f"{len(lengths)} samples cannot give each of {world_size} ranks one")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i)) if sort else list(range(len(lengths)))
    rows = [order[i : i + world_size] for i in range(0, len(order), world_size)]
    cuts = cut_under_budget([max(lengths[i] for i in row) for row in rows], max_frames, max_batch)
    batches = [[rows[j] for j in batch] for batch in cuts]
    if len(batches) > 1 and len(batches[-1]) == 1 and len(batches[-1][0]) < world_size:
        batches[-2].extend(batches.pop())
    return batches


def padding_fraction(batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions over batches given as lists of lengths."""
    real = sum(sum(batch) for batch in batches)
    padded = sum(len(batch) * max(batch) for batch in batches if batch)
    return 1.0 - real / padded if padded else 0.0
