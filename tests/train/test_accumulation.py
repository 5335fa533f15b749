"""Gradient accumulation through the trainer and a real DeepSpeed engine, on one rank.

DeepSpeed's engine scales the loss by 1/accumulation itself; a loss also divided by
the trainer would shrink every update of an accumulating run. One spawned gloo rank
keeps this in the fast suite (test_engine.py runs the 2-rank version).
"""

from __future__ import annotations

from pathlib import Path

import train_helpers as h

# Plain SGD without clipping: Adam would hide a loss divided twice (it normalises the
# gradient's scale away), and clipping would cap the larger of the two updates.
SGD = {"optimizer": {"type": "SGD", "params": {"lr": 0.5}}, "gradient_clipping": 0.0}


def _accumulation(rank, world, out):
    # No dropout: the two runs must see identical arithmetic, not identical RNG draws.
    cfg = h.tiny_config(dropout=0.0)
    params = {}
    for micro, accum in ((2, 2), (4, 1)):
        engine = h.make_engine(cfg, h.ds_config(0, micro=micro, accum=accum, world=1, **SGD), seed=7)
        # Every utterance has the same number of masked positions (exact_masks), so the
        # mean of two micro batches' losses is the loss of the batch of both.
        stream = h.FixedBatches(cfg, rank, micro, total=12)
        trainer = h.make_trainer(engine, stream, Path(out) / f"m{micro}", rank, world, 3)
        trainer.train()
        params[micro] = {"steps": trainer.step, "batches": stream.index, "params": h.params_of(engine)}
    initial = h.params_of(h.make_engine(cfg, h.ds_config(0, micro=4, world=1, **SGD), seed=7))
    return {
        "steps": [params[m]["steps"] for m in (2, 4)],
        "batches": [params[m]["batches"] for m in (2, 4)],
        "max_diff": h.max_diff(params[2]["params"], params[4]["params"]),
        "moved": h.max_diff(params[4]["params"], initial),
    }


def test_micro_2_x_accum_2_updates_the_weights_as_micro_4_x_accum_1(tmp_path):
    (result,) = h.run_ranks(_accumulation, 1, tmp_path, str(tmp_path))
    assert result["steps"] == [3, 3] and result["batches"] == [6, 3]
    assert result["moved"] > 1e-3  # the weights did change
    assert result["max_diff"] < 1e-4, result
