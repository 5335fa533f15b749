"""Print the machine and software versions a GPU check ran on.

    python benchmarks/gpu/env_report.py [--json PATH]

GPU model, memory, compute capability and driver; torch (and the CUDA and cuDNN it
was built with), triton, deepspeed; nvcc; the CPU model and core count; python.
Packages that are not installed are reported as such; nothing here needs a GPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

from common import write_json


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_output(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def collect() -> dict[str, str]:
    info = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
        "torch": version("torch"),
        "triton": version("triton"),
        "deepspeed": version("deepspeed"),
    }
    try:
        import torch
    except ImportError:
        info["gpu"] = "unknown (torch is not importable)"
    else:
        info["torch"] = torch.__version__
        info["torch CUDA"] = str(torch.version.cuda)
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        info["torch cuDNN"] = str(cudnn)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = (f"{props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                           f"{props.major}.{props.minor}, {props.multi_processor_count} SMs, "
                           f"{torch.cuda.device_count()} device(s)")
        else:
            info["gpu"] = "none visible to torch"
    smi = command_output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    info["nvidia-smi"] = smi.replace("\n", "; ") if smi else "not available"
    nvcc = command_output(["nvcc", "--version"])
    info["nvcc"] = nvcc.splitlines()[-1] if nvcc else "not on PATH"
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="also write the report to this file")
    args = p.parse_args(argv)
    info = collect()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key.ljust(width)}  {value}")
    write_json(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
