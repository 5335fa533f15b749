"""benchmarks/gpu_check.sh and its probes, on a machine without a GPU.

What needs a GPU (the kernels compiled, the timings, the training runs) is not
checked here; these tests cover the script's control flow (no-GPU exit, timeouts,
statuses, fallbacks, time budget), every probe's --help, the correctness probe's
comparison logic on CPU (eager and SDPA, and the fused kernel under Triton's
interpreter), the speed probe's table on CPU, the training probe's summary, and the
synthetic-audio fallback of the shard builder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
PROBES = REPO / "benchmarks" / "gpu"
sys.path.insert(0, str(PROBES))

import attention_correctness  # noqa: E402
import common  # noqa: E402
import requirements  # noqa: E402
import train_probe  # noqa: E402

PYTHON_PROBES = ["env_report.py", "requirements.py", "attention_correctness.py", "attention_speed.py",
                 "make_shards.py", "fused_adam_build.py", "train_probe.py"]  # fmt: skip
SHELL_SCRIPTS = [SCRIPT, PROBES / "setup_env.sh", PROBES / "fetch_wheels.sh"]
no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env.update(PYTHONPATH=str(REPO), MPLBACKEND="Agg", **extra)
    return env


def run_script(tmp_path, timeout=120, **extra):
    env = env_with(PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path / "logs"),
                   GPU_CHECK_WORK=str(tmp_path / "work"), GPU_CHECK_VENV=str(tmp_path / "venv"), **extra)  # fmt: skip
    return subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@no_gpu_here
def test_without_a_gpu_it_prints_not_run_and_its_plan_and_exits_0(tmp_path):
    result = run_script(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not run: no GPU available" in result.stdout
    for probe in ("env", "kernel", "setup", "shards", "fused_adam", "speed", "train_bf16", "train_fp16"):
        assert f"  {probe} " in result.stdout
    assert "attention_correctness.py" in result.stdout and "train_probe.py --precision fp16" in result.stdout
    # the header: versions and the CPU
    assert "torch " in result.stdout and "cpu " in result.stdout
    assert not (tmp_path / "venv").exists(), "nothing is set up without a GPU"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_have_help(script):
    result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and len(result.stdout.splitlines()) > 3, result.stderr
    assert "set -u" not in result.stdout


@pytest.mark.parametrize("probe", PYTHON_PROBES)
def test_python_probes_have_help(probe):
    result = subprocess.run([sys.executable, str(PROBES / probe), "--help"], capture_output=True, text=True,
                            timeout=120, env=env_with())  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def fake_probes(**overrides: str) -> dict[str, str]:
    """Every probe replaced by a shell command (default: succeed)."""
    runs = {name: "true" for name in ("env", "kernel", "setup", "shards", "fused_adam", "speed",
                                       "train_bf16", "train_fp16")}  # fmt: skip
    runs.update(overrides)
    return {f"GPU_CHECK_RUN_{name}": cmd for name, cmd in runs.items()}


def summary_rows(tmp_path) -> dict[str, list[str]]:
    lines = (tmp_path / "logs" / "summary.tsv").read_text().splitlines()
    return {line.split("\t")[0]: line.split("\t")[1:] for line in lines}


def test_statuses_timeouts_and_fallbacks(tmp_path):
    result = run_script(tmp_path, GPU_CHECK_ASSUME_GPU="1", GPU_CHECK_LIMIT_speed="2", **fake_probes(
        kernel="echo kernel-ran; exit 3", fused_adam="exit 1", speed="sleep 30",
        train_bf16='echo "bf16 args: $*"'))  # fmt: skip
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    rows = summary_rows(tmp_path)
    assert [rows[p][0] for p in ("env", "kernel", "setup", "shards", "fused_adam", "speed")] == [
        "ok", "FAILED", "ok", "ok", "FAILED", "timeout"]  # fmt: skip
    # FusedAdam did not build: both training runs take torch's AdamW and say so.
    assert "bf16 args: --optimizer torch_adam" in out
    assert rows["train_bf16"][0] == "ok" and "torch AdamW" in rows["train_bf16"][2]
    assert "kernel-ran" in (tmp_path / "logs" / "gpu_check.log").read_text()
    assert "gpu_check summary" in out and "not every probe passed" in out


def test_every_probe_ok_exits_0_and_failed_setup_skips_what_needs_it(tmp_path):
    ok = run_script(tmp_path, GPU_CHECK_ASSUME_GPU="1", **fake_probes())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "every probe passed" in ok.stdout
    assert all(row[0] == "ok" for row in summary_rows(tmp_path).values())

    failed = run_script(tmp_path, GPU_CHECK_ASSUME_GPU="1", **fake_probes(setup="exit 1"))
    assert failed.returncode == 1
    rows = summary_rows(tmp_path)
    assert rows["setup"][0] == "FAILED"
    assert {p: rows[p][0] for p in ("shards", "fused_adam", "train_bf16", "train_fp16")} == dict.fromkeys(
        ("shards", "fused_adam", "train_bf16", "train_fp16"), "skipped")
    assert rows["speed"][0] == "ok", "probes that do not need the setup still run"


def test_the_time_budget_skips_probes_it_has_no_time_for(tmp_path):
    # The kernel probe's limit (150 s) is cut to what is left of 25 s; nothing starts after it.
    result = run_script(tmp_path, GPU_CHECK_ASSUME_GPU="1", GPU_CHECK_BUDGET_S="25",
                        **fake_probes(kernel="sleep 60"))  # fmt: skip
    assert result.returncode == 1
    rows = summary_rows(tmp_path)
    assert rows["kernel"][0] == "timeout" and int(rows["kernel"][1]) <= 25
    assert rows["speed"][0] == "skipped" and "budget" in rows["speed"][2]
    assert rows["train_fp16"][0] == "skipped"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shell_scripts_are_shellcheck_clean():
    result = subprocess.run(["shellcheck", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_correctness_probe_on_cpu_with_eager_and_sdpa(tmp_path):
    out = tmp_path / "kernel.json"
    assert attention_correctness.main(["--device", "cpu", "--impls", "eager,sdpa", "--json", str(out)]) == 0
    checks = json.loads(out.read_text())["checks"]
    kinds = {(c["check"], c["impl"], c["dtype"]) for c in checks}
    for impl in ("eager", "sdpa"):
        for dtype in ("fp32", "bf16"):
            assert ("accuracy", impl, dtype) in kinds and ("exact-zeros", impl, dtype) in kinds
        assert ("determinism", impl, "fp32") in kinds
    assert all(c["ok"] for c in checks)


def test_correctness_probe_reports_errors_and_leaks(monkeypatch, capsys):
    real = attention_correctness.run_impl

    def perturbed(impl, q, k, v, mask, grad_out, key_lengths=None):
        out, dq, dk, dv = real(impl, q, k, v, mask, grad_out, key_lengths)
        if impl == "eager":  # off by 1 % of the output's scale, and a gradient on a masked key
            out = out + 0.01 * out.abs().max()
            dk = dk.masked_fill(~mask[:, None, :, None], 1e-3)
        return out, dq, dk, dv

    monkeypatch.setattr(attention_correctness, "run_impl", perturbed)
    assert attention_correctness.main(["--device", "cpu", "--impls", "eager,sdpa", "--dtypes", "fp32"]) == 1
    text = capsys.readouterr().out
    failed = [line for line in text.splitlines() if line.startswith("FAILED")]
    assert any("accuracy     eager" in line for line in failed)
    assert any("exact-zeros  eager" in line and "dk != 0 at masked keys" in line for line in failed)
    assert not any(" sdpa " in line for line in failed)


def test_reference_gives_exact_zeros_for_keyless_queries():
    case = attention_correctness.Case("t", 2, 1, 5, 7, 4, 0.5, empty=True)
    q, k, v, grad_out, mask = attention_correctness.make_inputs(case, torch.float32, torch.device("cpu"))
    out, dq, dk, dv = attention_correctness.reference(q, k, v, mask, grad_out)
    assert not mask[1].any()
    assert out[1].count_nonzero() == 0 and dq[1].count_nonzero() == 0
    assert torch.isfinite(out).all() and torch.isfinite(dq).all()
    assert attention_correctness.zero_checks((out, dq, dk, dv), mask, attention_correctness.key_lengths_for(case)) == []


def test_fused_kernel_through_the_correctness_probe_in_the_interpreter():
    pytest.importorskip("triton")
    result = subprocess.run(
        [sys.executable, str(PROBES / "attention_correctness.py"), "--device", "cpu", "--impls", "fused",
         "--dtypes", "fp32", "--baseline", "sdpa"],
        capture_output=True, text=True, timeout=300, env=env_with(TRITON_INTERPRET="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("accuracy", "exact-zeros", "determinism", "int-mask", "key_lengths"):
        assert f"ok      {check}" in result.stdout


def test_speed_probe_table_on_cpu():
    pytest.importorskip("triton")
    result = subprocess.run(
        [sys.executable, str(PROBES / "attention_speed.py"), "--device", "cpu", "--dtype", "fp32", "--shapes",
         "tiny", "--pads", "0.5", "--impls", "fused,sdpa,sdpa-cudnn", "--warmup-ms", "1", "--rep-ms", "1"],
        capture_output=True, text=True, timeout=300, env=env_with(TRITON_INTERPRET="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fastest masked" in result.stdout and "max |diff| vs fused" in result.stdout
    assert "MISMATCH" not in result.stdout
    assert "default dispatch" in result.stdout  # the fully masked row check ran


def test_peak_table():
    assert common.peak_flops("NVIDIA H200", "bf16") == 989e12
    assert common.peak_flops("NVIDIA H100 80GB HBM3", "fp16") == 989e12
    assert common.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert common.peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert common.peak_flops("Tesla T4", "bf16") is None


def test_training_summary_skips_the_first_window_and_judges_the_data_wait():
    windows = [
        {"step": 10, "perf/step_time_s": 5.0, "perf/frames_per_s": 10.0, "perf/flops_per_s": 1e12,
         "perf/data_wait_share": 0.5, "train/loss": 9.0, "sys/memory_gb_max_rank": 3.0},
        {"step": 20, "perf/step_time_s": 0.1, "perf/frames_per_s": 1000.0, "perf/flops_per_s": 100e12,
         "perf/data_wait_share": 0.01, "train/loss": 8.0, "sys/memory_gb_max_rank": 4.0},
        {"step": 30, "perf/step_time_s": 0.3, "perf/frames_per_s": 3000.0, "perf/flops_per_s": 300e12,
         "perf/data_wait_share": 0.2, "train/loss": 7.0, "sys/memory_gb_max_rank": 4.0,
         "train/loss_scale": 1024.0, "train/skipped_steps": 3.0},
    ]  # fmt: skip
    summary = train_probe.summarize(windows, peak=1000e12)
    assert summary["perf/step_time_s"] == pytest.approx(0.2)
    assert summary["perf/mfu"] == pytest.approx(0.2)  # 200e12 / 1000e12, from the peak
    assert summary["data_bound"] and summary["train/skipped_steps"] == 3.0
    rows = dict(train_probe.format_summary(summary, 1000e12))
    assert rows["MFU"] == "20.0 %" and rows["step waited on data"].startswith("yes")
    assert rows["loss first -> last window"] == "9.000 -> 7.000"
    assert dict(train_probe.format_summary(train_probe.summarize(windows[:2], None), None))["MFU"] == "peak unknown"


def test_training_probe_command(capsys, tmp_path):
    args = ["--precision", "fp16", "--shards", str(tmp_path), "--out", str(tmp_path / "run"), "--dry-run"]
    assert train_probe.main(args + ["--optimizer", "torch_adam"]) == 0
    command = capsys.readouterr().out.split("command: ", 1)[1]
    for part in ("--num_gpus 1", "launch/pretrain.py", "ds_configs/zero2.json", "--preset base",
                 "--precision fp16", "--steps 80", "--ds optimizer.params.torch_adam=true"):  # fmt: skip
        assert part in command
    assert not (tmp_path / "run").exists()


def test_requirements_come_from_setup_py():
    reqs = requirements.project_requirements()
    assert any(r.startswith("deepspeed") for r in reqs) and any(r.startswith("triton") for r in reqs)
    assert requirements.check("no-such-distribution-ctal-ds>=1")[1:] == (None, False)


def test_shards_from_synthetic_audio(tmp_path):
    result = subprocess.run(
        [sys.executable, str(PROBES / "make_shards.py"), "--out", str(tmp_path), "--synthetic",
         "--synthetic-utterances", "6", "--workers", "1", "--samples-per-shard", "3"],
        capture_output=True, text=True, timeout=300, env=env_with(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 6
    assert "synthetic audio" in result.stdout


def test_large_case_checks_run_on_small_sizes_on_cpu():
    report = attention_correctness.Report()
    attention_correctness.check_large_grid(torch.device("cpu"), report, batch=3, heads=2, impl="eager")
    attention_correctness.check_large_offset(torch.device("cpu"), report, batch=3, length=40, impl="eager")
    assert [r["check"] for r in report.rows] == ["large-grid", "large-offset"]
    assert all(r["ok"] for r in report.rows), report.rows
