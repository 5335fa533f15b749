"""Training-data fractions for the data-efficiency study (paper section 5.2, figures 2-3).

The curves compare variants at 10 %, 20 %, ... of the training set. Nested subsets
(the 10 % subset inside the 20 % one, for every variant) make a point on the curve
differ from its neighbour only by the added data, not by a new random draw, and give
every variant the same utterances at each fraction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import numpy as np


def subsample(
    ids: Sequence[str],
    fraction: float,
    seed: int = 0,
    stratify_by: Sequence[Hashable] | None = None,
) -> list[str]:
    """A deterministic ``fraction`` of ``ids``, in their input order.

    Each stratum (a value of ``stratify_by``, parallel to ``ids``; one stratum if None)
    is shuffled once by ``seed``; the subset keeps the first ``max(1, round(fraction *
    n_stratum))`` of that shuffle. The shuffle does not depend on ``fraction``, and the
    count grows with it, so a smaller fraction's subset is always inside a larger one's;
    every stratum keeps at least one utterance so no class disappears at 10 %. The
    result does not depend on the order of ``ids``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids contain duplicates")
    keys = [None] * len(ids) if stratify_by is None else list(stratify_by)
    if len(keys) != len(ids):
        raise ValueError(f"stratify_by has {len(keys)} values for {len(ids)} ids")
    strata: dict[Hashable, list[str]] = defaultdict(list)
    for utt, key in zip(ids, keys):
        strata[key].append(utt)
    rng = np.random.default_rng(seed)
    kept: set[str] = set()
    # Strata in a fixed order and members sorted, so the draw depends only on the seed
    # and the set of (id, stratum) pairs.
    for key in sorted(strata, key=repr):
        members = sorted(strata[key])
        shuffled = [members[i] for i in rng.permutation(len(members))]
        kept.update(shuffled[: max(1, round(fraction * len(members)))])
    return [utt for utt in ids if utt in kept]
