"""The trainer around real DeepSpeed engines: 2 gloo processes, the CTAL tiny model.

Each test is one `torch.multiprocessing.spawn` of two ranks (about 10-20 s, mostly
start-up), so several scenarios share a spawn where they can.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import train_helpers as h

from ctal_ds.train.checkpoint import latest_complete

# Above the bounded waits of any one test: one spawn (run_ranks, 420 s) and a 120 s export check.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


# ZeRO stages ----------------------------------------------------------------------------


def _train_each_stage(rank, world, out):
    cfg = h.tiny_config()
    losses = {}
    for stage in (1, 2, 3):
        engine = h.make_engine(cfg, h.ds_config(stage))
        trainer = h.make_trainer(engine, h.SyntheticStream(cfg, 0, rank), Path(out) / f"z{stage}", rank, world, 12)
        trainer.train()
        losses[stage] = [r["train/loss"] for r in trainer.tracker.rows]
    return losses


def test_zero_stages_1_2_3_train_and_agree(tmp_path):
    losses = h.run_ranks(_train_each_stage, 2, tmp_path, str(tmp_path))[0]
    for stage, curve in losses.items():
        assert len(curve) == 12
        assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3, (stage, curve)
    # fp32 ZeRO stages partition the same arithmetic differently, nothing more.
    for stage in ("2", "3"):
        assert max(abs(a - b) for a, b in zip(losses["1"], losses[stage])) < 1e-4


# Gradient accumulation ------------------------------------------------------------------


def _accumulation(rank, world, out):
    # No dropout: the two runs must see identical arithmetic, not identical RNG draws.
    cfg = h.tiny_config(dropout=0.0)
    params = {}
    # Plain SGD without clipping: Adam would hide a loss divided twice (it normalises
    # the gradient's scale away).
    sgd = {"optimizer": {"type": "SGD", "params": {"lr": 0.5}}, "gradient_clipping": 0.0,
           "zero_allow_untested_optimizer": True}
    for micro, accum in ((2, 2), (4, 1)):
        engine = h.make_engine(cfg, h.ds_config(2, micro=micro, accum=accum, **sgd), seed=7)
        # The losses are means over masked positions of a micro batch, and the engine
        # averages micro batches: equal to one big batch when every utterance has the
        # same number of masked positions (exact_masks).
        stream = h.FixedBatches(cfg, rank, micro)
        trainer = h.make_trainer(engine, stream, Path(out) / f"m{micro}", rank, world, 3)
        trainer.train()
        assert stream.index == 3 * accum
        params[micro] = h.params_of(engine)
    initial = h.params_of(h.make_engine(cfg, h.ds_config(2, **sgd), seed=7))
    return {"max_diff": h.max_diff(params[2], params[4]), "moved": h.max_diff(params[4], initial)}


def test_micro_2_x_accum_2_equals_micro_4_x_accum_1(tmp_path):
    for result in h.run_ranks(_accumulation, 2, tmp_path, str(tmp_path)):
        assert result["moved"] > 1e-3  # the weights did change
        assert result["max_diff"] < 1e-4, result


# Kill and resume ---------------------------------------------------------------------------


def _resume(rank, world, out):
    out = Path(out)
    # Dropout on and batch sizes varying: an exact match needs the RNG states and the
    # stream position of every rank restored, not only the weights.
    cfg = h.tiny_config(dropout=0.1)
    sizes = (4, 2, 3)
    ds = h.ds_config(2, micro=4, accum=2)

    full = h.make_trainer(h.make_engine(cfg, ds), h.SyntheticStream(cfg, 0, rank, sizes), out / "full", rank, world, 6)
    full.train()

    first = h.make_trainer(h.make_engine(cfg, ds), h.SyntheticStream(cfg, 0, rank, sizes), out / "cut", rank, world, 6,
                           exit_at_step=3)  # fmt: skip
    stopped = first.train()
    tag_dir = latest_complete(out / "cut" / "checkpoints")

    torch.manual_seed(1234 + rank)  # a different process history before the resume
    second = h.make_trainer(h.make_engine(cfg, ds, seed=99), h.SyntheticStream(cfg, 0, rank, sizes), out / "cut", rank,
                            world, 6)  # fmt: skip
    second.resume(tag_dir)
    resumed_at = second.step
    done = second.train()
    return {
        "stopped": [stopped.step, stopped.finished, stopped.reason],
        "tag": tag_dir.name,
        "resumed_at": resumed_at,
        "done": [done.step, done.finished],
        "max_diff": h.max_diff(h.params_of(full.engine), h.params_of(second.engine)),
        "full_losses": [r["train/loss"] for r in full.tracker.rows],
        "cut_losses": [r["train/loss"] for r in first.tracker.rows + second.tracker.rows],
        "stream_index": [full.train_stream.index, second.train_stream.index],
    }


def test_exit_and_resume_equals_uninterrupted_run(tmp_path):
    for result in h.run_ranks(_resume, 2, tmp_path, str(tmp_path)):
        assert result["stopped"] == [3, False, "--exit-at-step reached"]
        assert result["tag"] == "global_step3" and result["resumed_at"] == 3
        assert result["done"] == [6, True]
        assert result["stream_index"][0] == result["stream_index"][1] == 12
        assert result["full_losses"] == pytest.approx(result["cut_losses"], abs=1e-6)
        assert result["max_diff"] < 1e-6


def _resume_past_a_corrupted_tag(rank, world, out):
    import torch.distributed as dist

    from ctal_ds.train.checkpoint import agree_on_resume, verify_tag

    out, root = Path(out), Path(out) / "checkpoints"
    cfg = h.tiny_config()
    ds = h.ds_config(2)
    first = h.make_trainer(h.make_engine(cfg, ds), h.SyntheticStream(cfg, 0, rank), out, rank, world, 4)
    first.cfg.checkpoint.save_every = 2
    first.train()
    if rank == 0:  # one byte of DeepSpeed's own file, in the middle
        model = root / "global_step4" / "mp_rank_00_model_states.pt"
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    dist.barrier()

    choice = agree_on_resume("auto", root)  # rank 0 verifies, every rank gets its answer
    second = h.make_trainer(h.make_engine(cfg, ds, seed=99), h.SyntheticStream(cfg, 0, rank), out, rank, world, 6)
    second.cfg.checkpoint.save_every = 2
    second.checkpointer.keep_last = 1
    second.resume(choice.tag_dir)
    resumed_at = [second.step, second.train_stream.index]
    done = second.train()
    return {
        "tag": choice.tag_dir.name,
        "rejected": [r.describe() for r in choice.rejected],
        "resumed_at": resumed_at,
        "done": done.step,
        "tags": sorted(p.name for p in root.glob("global_step*")),
        "verified": [verify_tag(root / name) for name in ("global_step2", "global_step6")],
    }


def test_a_corrupted_newest_checkpoint_is_skipped_by_every_rank_and_kept_out_of_pruning(tmp_path):
    results = h.run_ranks(_resume_past_a_corrupted_tag, 2, tmp_path, str(tmp_path))
    assert results[0]["rejected"] == results[1]["rejected"]
    for result in results:
        assert result["tag"] == "global_step2" and result["done"] == 6
        assert result["resumed_at"] == [2, 2]  # engine step, and the stream position from the rank state
        [rejected] = result["rejected"]
        assert rejected.startswith("global_step4: mp_rank_00_model_states.pt: sha256 "), rejected
        # keep_last 1, but the tag resumed from stays; the damaged global_step4 was replaced, then pruned.
        assert result["tags"] == ["global_step2", "global_step6"]
        assert result["verified"] == [[], []]


# Health: non-finite loss and fp16 loss-scale collapse ------------------------------------


def _health(rank, world, out):
    from deepspeed.accelerator import get_accelerator

    from ctal_ds.model import CTALForPretraining
    from ctal_ds.train.health import TrainingDiverged

    out = Path(out)
    cfg = h.tiny_config(dropout=0.0)
    report = {}

    # A NaN that only rank 1 sees stops both ranks before the update, at the same step.
    engine = h.make_engine(cfg, h.ds_config(2))
    stream = _NaNLoss(h.SyntheticStream(cfg, 0, rank), at=3 if rank == 1 else None)
    trainer = h.make_trainer(engine, stream, out / "nan", rank, world, 6)
    try:
        trainer.train()
    except TrainingDiverged as err:
        report["nan"] = str(err)
    report["nan_step"] = trainer.step
    report["nan_params_finite"] = all(torch.isfinite(p).all().item() for p in engine.module.parameters())
    report["nan_checkpoints"] = sorted(p.name for p in (out / "nan" / "checkpoints").glob("global_step*"))

    # fp16 whose gradients overflow at any scale: the scale falls to its floor and the
    # run stops with a diagnosis. The CPU accelerator's fp16 flag is forced on where
    # mkldnn lacks fp16: this checks the loss-scaling logic, not fp16 speed.
    get_accelerator().is_fp16_supported = lambda: True

    class Overflowing(CTALForPretraining):
        def forward(self, batch):
            result = super().forward(batch)
            # d(loss)/d(bias) = 1e5 > fp16 max (65504) even at loss scale 1.
            result["loss"] = result["loss"] + 1e5 * self.mcam_head.decoder.bias.float().sum()
            return result

    import deepspeed

    torch.manual_seed(0)
    model = Overflowing(cfg)
    fp16 = {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 3, "hysteresis": 1,
                     "loss_scale_window": 1000, "min_loss_scale": 1}}  # fmt: skip
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=h.ds_config(2, **fp16))
    trainer = h.make_trainer(engine, h.SyntheticStream(cfg, 0, rank), out / "fp16", rank, world, 10)
    try:
        trainer.train()
    except TrainingDiverged as err:
        report["fp16"] = str(err)
    report["fp16_skipped"] = engine.skipped_steps
    return report


class _NaNLoss:
    """Wraps a stream; at micro step `at` the batch's frames are NaN, so the MCAM loss is."""

    def __init__(self, inner, at: int | None) -> None:
        self.inner, self.at, self.n = inner, at, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        self.n += 1
        if self.n == self.at:
            batch["mcam_targets"] = torch.full_like(batch["mcam_targets"], float("nan"))
        return batch


def test_nan_on_one_rank_and_fp16_scale_collapse_stop_every_rank_with_a_diagnosis(tmp_path):
    for report in h.run_ranks(_health, 2, tmp_path, str(tmp_path)):
        assert "non-finite mcam_loss at step 3" in report["nan"], report
        assert report["nan_step"] == 2  # step 3 was not applied
        assert report["nan_params_finite"]
        assert report["nan_checkpoints"] == []  # nothing saved on the way out
        assert "fp16 loss scale collapsed" in report["fp16"], report
        assert report["fp16_skipped"] >= 3


# Damaged data ------------------------------------------------------------------------------


class _Damaged(h.SyntheticStream):
    """A stream with the shard loader's DamageLog; rank 1 meets a damaged shard at batch `at`."""

    def __init__(self, cfg, seed, rank, at: int | None) -> None:
        from ctal_ds.data.damage import DamageLog

        super().__init__(cfg, seed, rank)
        self.damage, self.at = DamageLog(max_bad_shards=5, max_bad_samples=5), at

    def __next__(self):
        from ctal_ds.data.damage import SampleDamage, ShardDamage

        if self.index == self.at:
            self.damage.record([ShardDamage("shard-000005.tar", "unreadable after 1 samples"),
                                SampleDamage("shard-000002.tar", "utt7", "no feats.npy"),
                                ShardDamage("shard-000005.tar", "met again")])  # fmt: skip
        return super().__next__()


def _damage_counts(rank, world, out):
    cfg = h.tiny_config()
    engine = h.make_engine(cfg, h.ds_config(2))
    stream = _Damaged(cfg, 0, rank, at=2 if rank == 1 else None)
    trainer = h.make_trainer(engine, stream, Path(out), rank, world, 4)
    trainer.train()
    return [(r["step"], r["data/damaged_shards"], r["data/damaged_samples"]) for r in trainer.tracker.rows]


def test_damaged_shards_and_samples_of_any_rank_are_counted_in_the_logged_metrics(tmp_path):
    # Rank 1's third batch (step 3) comes with one damaged shard, met twice, and one sample.
    rows = h.run_ranks(_damage_counts, 2, tmp_path, str(tmp_path))[0]
    assert rows == [[1, 0.0, 0.0], [2, 0.0, 0.0], [3, 1.0, 1.0], [4, 1.0, 1.0]]


# Export ------------------------------------------------------------------------------------


def _train_zero3_and_record_outputs(rank, world, out):
    out = Path(out)
    cfg = h.tiny_config()
    engine = h.make_engine(cfg, h.ds_config(3))
    trainer = h.make_trainer(engine, h.SyntheticStream(cfg, 0, rank), out, rank, world, 3)
    trainer.train()
    batch = h.make_batch(cfg, torch.Generator().manual_seed(5), 3)
    engine.eval()
    with torch.no_grad():
        result = engine(batch)
    if rank == 0:
        torch.save(batch, out / "probe_batch.pt")
    return {k: result[k].item() for k in ("loss", "mlm_loss", "mcam_loss")}


LOAD_WITHOUT_DEEPSPEED = """
import json, sys, torch
from ctal_ds.model import load_pretrained
model = load_pretrained(sys.argv[1]).eval()
assert "deepspeed" not in sys.modules, "export must load without DeepSpeed"
tied = model.mlm_head.decoder.weight is model.ctal.text_encoder.embeddings.token.weight
with torch.no_grad():
    out = model(torch.load(sys.argv[2]))
print(json.dumps({"tied": tied, **{k: out[k].item() for k in ("loss", "mlm_loss", "mcam_loss")}}))
"""


def test_zero3_export_loads_without_deepspeed_with_same_outputs_and_tied_weights(tmp_path):
    from ctal_ds.train.export import export_checkpoint

    engine_out = h.run_ranks(_train_zero3_and_record_outputs, 2, tmp_path, str(tmp_path))[0]
    tag_dir = latest_complete(tmp_path / "checkpoints")
    assert tag_dir.name == "global_step3"
    export_dir = export_checkpoint(tag_dir, tmp_path / "export")
    assert json.loads((export_dir / "export.json").read_text())["step"] == 3
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_DEEPSPEED, str(export_dir), str(tmp_path / "probe_batch.pt")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    exported = json.loads(result.stdout.strip().splitlines()[-1])
    assert exported.pop("tied") is True
    assert exported == pytest.approx(engine_out, abs=1e-5)


# The shipped CPU config ------------------------------------------------------------------


def _cpu_json_against_deepspeed_defaults(rank, world, out):
    from ctal_ds.train import ds_config
    from ctal_ds.train.config import OptimOverrides

    cfg = h.tiny_config(dropout=0.0)
    over = OptimOverrides(micro_batch_size=2, grad_accum=2, warmup_steps=1)
    shipped, *_ = ds_config.resolve(ds_config.load(h.REPO / "ds_configs" / "cpu.json"), over, 6, world, "WORLD_SIZE")
    # The same run with DeepSpeed's defaults for everything that only changes speed:
    # the optimizer's torch kernel choice and every ZeRO bucketing / communication knob.
    plain = json.loads(json.dumps(shipped))
    for key in ("fused", "foreach"):
        plain["optimizer"]["params"].pop(key, None)
    plain["zero_optimization"] = {"stage": shipped["zero_optimization"]["stage"]}
    params, losses, optimizers = {}, {}, {}
    for name, ds in (("shipped", shipped), ("plain", plain)):
        engine = h.make_engine(cfg, ds, seed=3)
        trainer = h.make_trainer(engine, h.SyntheticStream(cfg, 5, rank, sizes=(2,)), Path(out) / name, rank, world, 6)
        trainer.train()
        params[name], losses[name] = h.params_of(engine), [r["train/loss"] for r in trainer.tracker.rows]
        inner = engine.optimizer.optimizer  # the torch optimizer inside ZeRO's
        optimizers[name] = [type(inner).__name__, bool(inner.param_groups[0].get("fused"))]
    initial = h.params_of(h.make_engine(cfg, plain, seed=3))
    return {
        "stage": shipped["zero_optimization"]["stage"],
        "optimizers": optimizers,
        "max_diff": h.max_diff(params["shipped"], params["plain"]),
        "moved": h.max_diff(params["shipped"], initial),
        "losses": losses,
    }


def test_the_speed_settings_of_cpu_json_train_as_deepspeed_defaults_do(tmp_path):
    """Two ranks, ZeRO as shipped, accumulation 2: the bucket sizes and the fused AdamW
    kernel of ds_configs/cpu.json give the weights DeepSpeed's defaults give."""
    for result in h.run_ranks(_cpu_json_against_deepspeed_defaults, 2, tmp_path, str(tmp_path)):
        assert result["stage"] == 2
        assert result["optimizers"] == {"shipped": ["AdamW", True], "plain": ["AdamW", False]}
        assert len(result["losses"]["shipped"]) == 6
        assert result["moved"] > 1e-3  # six AdamW updates did change the weights
        assert result["max_diff"] < 1e-5, result
        assert result["losses"]["shipped"] == pytest.approx(result["losses"]["plain"], abs=1e-5)
