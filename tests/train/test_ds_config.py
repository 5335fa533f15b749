"""DeepSpeed config resolution: every bad setting fails before compute, saying what to change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctal_ds.train import ds_config
from ctal_ds.train.config import ConfigError, OptimOverrides

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "ds_configs").glob("*.json"))


def resolve(cfg, world=2, steps=None, accelerator="cuda", fp16_supported=True, **over):
    return ds_config.resolve(cfg, OptimOverrides(**over), steps, world, "WORLD_SIZE", accelerator, fp16_supported)


def base(**extra):
    cfg = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    cfg.update(extra)
    return cfg


def test_shipped_configs_are_explicit_and_resolve_on_gpu():
    assert {p.name for p in CONFIGS} >= {"zero0.json", "zero1.json", "zero2.json", "zero3.json",
                                          "zero2_offload.json", "cpu.json"}  # fmt: skip
    for path in CONFIGS:
        text = path.read_text()
        assert '"auto"' not in text, path
        cfg = json.loads(text)
        assert cfg["scheduler"]["params"]["warmup_type"] == "linear", path
        out, plan, _, _ = resolve(cfg, world=4, accelerator="cuda", fp16_supported=True, steps=20000)
        assert out["train_batch_size"] == plan.micro * plan.accum * 4
        assert out["scheduler"]["params"]["total_num_steps"] == 20000


def test_cpu_config_runs_without_fp16_and_uses_torch_adam():
    cfg = json.loads((REPO / "ds_configs" / "cpu.json").read_text())
    out, _, _, _ = resolve(cfg, steps=500, accelerator="cpu", fp16_supported=False)
    # cpu.json enables neither fp16 nor bf16, and resolving for a CPU keeps it so.
    assert (out["fp16"]["enabled"], out["bf16"]["enabled"]) == (False, False)
    assert ds_config.precision_of(out) == "fp32"
    assert out["optimizer"]["params"]["torch_adam"] is True


def test_batch_size_is_derived_and_printed_with_its_world_source():
    out, plan, _, notes = resolve(base(), world=3, micro_batch_size=5, grad_accum=2)
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"], out["train_batch_size"]) == (5, 2, 30)
    assert "micro batch 5" in notes[0] and "accumulation 2" in notes[0] and "world size 3" in notes[0]
    assert "WORLD_SIZE" in notes[0]


def test_inconsistent_train_batch_size_names_the_fix():
    cfg = base(train_batch_size=32)  # micro 4 x accum 1 x world 2 = 8
    with pytest.raises(ConfigError) as err:
        resolve(cfg)
    message = str(err.value)
    assert "train_batch_size 32" in message and "= 8" in message and "WORLD_SIZE" in message
    assert "--grad-accum 4" in message


def test_accumulation_is_derived_from_train_batch_size_when_missing():
    cfg = base(train_batch_size=24)
    del cfg["gradient_accumulation_steps"]
    out, plan, _, _ = resolve(cfg, world=2)
    assert (plan.micro, plan.accum) == (4, 3)
    cfg["train_batch_size"] = 25
    with pytest.raises(ConfigError, match="not a multiple"):
        resolve(cfg, world=2)


def test_fp16_and_bf16_both_enabled_is_refused_unless_precision_is_chosen():
    cfg = base(bf16={"enabled": True})
    with pytest.raises(ConfigError, match="both enabled"):
        resolve(cfg, accelerator="cuda", fp16_supported=True)
    out, _, _, _ = resolve(cfg, accelerator="cuda", fp16_supported=True, precision="bf16")
    assert (out["fp16"]["enabled"], out["bf16"]["enabled"]) == (False, True)
    # The loss-scaling settings survive a switch away and back.
    assert out["fp16"]["initial_scale_power"] == 16


def test_bf16_accumulates_gradients_in_fp32_where_deepspeed_allows_it():
    out, _, _, notes = resolve(base(), precision="bf16")
    assert out["data_types"]["grad_accum_dtype"] == "fp32"
    assert any("fp32 gradient accumulation" in n for n in notes)
    out, _, _, _ = resolve(base(), precision="bf16", extra=["zero_optimization.stage=0"])
    assert "data_types" not in out  # DeepSpeed refuses bf16 + fp32 accumulation at stage 0
    out, _, _, _ = resolve(base(), precision="bf16", extra=["data_types.grad_accum_dtype=bf16"])
    assert out["data_types"]["grad_accum_dtype"] == "bf16"  # an explicit choice is kept
    out, _, _, _ = resolve(base())
    assert "data_types" not in out


def test_fp16_on_an_accelerator_without_it_fails_early():
    with pytest.raises(ConfigError, match="fp16 is not supported on the cpu accelerator"):
        resolve(base(), accelerator="cpu", fp16_supported=False)
    out, _, _, _ = resolve(base(), accelerator="cpu", fp16_supported=False, precision="fp32")
    assert ds_config.precision_of(out) == "fp32"


def test_overrides_reach_optimizer_schedule_and_clipping():
    out, _, _, _ = resolve(base(), steps=300, precision="fp32", lr=1e-3, warmup_steps=30, grad_clip=0.5,
                        extra=["zero_optimization.stage=3", "optimizer.params.weight_decay=0.1"])  # fmt: skip
    assert out["optimizer"]["params"]["lr"] == 1e-3
    assert out["scheduler"]["params"] == {**out["scheduler"]["params"], "warmup_max_lr": 1e-3,
                                          "warmup_num_steps": 30, "total_num_steps": 300}  # fmt: skip
    assert out["gradient_clipping"] == 0.5
    assert out["zero_optimization"]["stage"] == 3
    assert out["optimizer"]["params"]["weight_decay"] == 0.1


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="--warmup-steps"):
        resolve(base(), steps=50, precision="fp32")


def test_run_length_defaults_to_the_schedule_and_steps_override_it():
    _, _, steps, _ = resolve(base())
    assert steps == 1_000_000
    out, _, steps, _ = resolve(base(), steps=20000)
    assert steps == 20000 == out["scheduler"]["params"]["total_num_steps"]
    cfg = base()
    del cfg["scheduler"]
    with pytest.raises(ConfigError, match="--steps"):
        resolve(cfg, steps=None)


def test_missing_warmup_type_becomes_linear_not_deepspeeds_log():
    cfg = base()
    del cfg["scheduler"]["params"]["warmup_type"]
    out, _, _, _ = resolve(cfg, precision="fp32")
    assert out["scheduler"]["params"]["warmup_type"] == "linear"


def test_offload_keeps_deepspeeds_cpu_adam_and_gpu_keeps_fused_adam():
    offload = json.loads((REPO / "ds_configs" / "zero2_offload.json").read_text())
    out, _, _, _ = resolve(offload, accelerator="cpu", fp16_supported=False, precision="fp32")
    assert "torch_adam" not in out["optimizer"]["params"]
    out, _, _, _ = resolve(base())
    assert "torch_adam" not in out["optimizer"]["params"]


def _run_pretrain(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    shards = tmp_path / "shards"
    shards.mkdir(exist_ok=True)
    (shards / "manifest.json").write_text("{}")
    cmd = [sys.executable, str(REPO / "launch" / "pretrain.py"), "--out", str(tmp_path / "out"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--deepspeed_config", "ds_configs/cpu.json", "--train-shards", "nowhere"], "no manifest.json"),
        (["--deepspeed_config", "ds_configs/zero2.json", "--train-shards", "{shards}", "--ds",
          "bf16.enabled=true"], "fp16 and bf16 are both enabled"),
        (["--deepspeed_config", "ds_configs/cpu.json", "--train-shards", "{shards}", "--ds",
          "train_batch_size=64"], "train_batch_size 64 != micro batch 8"),
    ],
)
def test_launcher_exits_2_before_any_compute_on_bad_config(tmp_path, args, message):
    args = [a.replace("{shards}", str(tmp_path / "shards")) for a in args]
    result = _run_pretrain(tmp_path, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    # Nothing was started: no process group (its rank map), no output directory.
    assert "rank map" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()
