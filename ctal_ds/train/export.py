"""ZeRO checkpoint -> consolidated `save_pretrained` directory, loadable without DeepSpeed.

The fp32 master weights are gathered from every rank's partition with DeepSpeed's
`get_fp32_state_dict_from_zero_checkpoint`. `zero_to_fp32` has dropped tied weights
before (DESIGN section 4), so tied aliases are checked here, not trusted: every group
of names that share one parameter in the model must either agree or be filled from
the member that is present, and the tie must hold in the loaded model.

A ZeRO-0 checkpoint has no partitioned optimizer files; its module weights are read
directly (in the precision the engine kept them: fp32 unless fp16/bf16 was on).

Both conversions read only a tag whose files match its `complete.json` (sizes, and
sha256 unless `verify_hash` is off); otherwise they raise CheckpointError naming the
files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctal_ds.train.checkpoint import (
    MARKER,
    file_manifest,
    fsync_files,
    is_complete,
    require_verified,
    write_durably,
    write_marker,
)


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    tag_dir = Path(tag_dir)
    if any(tag_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that refer to one shared parameter, e.g. the MLM decoder and token embeddings."""
    by_param: dict[int, list[str]] = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        by_param[id(param)].append(name)
    return [names for names in by_param.values() if len(names) > 1]


def restore_tied(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Fill missing tied aliases from their partner; returns the names filled in."""
    filled = []
    for names in tied_groups(model):
        present = [n for n in names if n in state]
        if not present:
            raise KeyError(f"tied weights {names}: none of them is in the checkpoint")
        for other in present[1:]:
            if not torch.equal(state[present[0]], state[other]):
                raise ValueError(f"tied weights {present[0]} and {other} differ in the checkpoint")
        for name in names:
            if name not in state:
                state[name] = state[present[0]]
                filled.append(name)
    return filled


def build_model(model_meta: dict[str, Any]) -> nn.Module:
    from ctal_ds.model import CTALConfig, PretrainedModel

    cls = PretrainedModel.architectures[model_meta["architecture"]]
    return cls(CTALConfig.from_dict(model_meta["model"]), **model_meta.get("head", {}))


def export_checkpoint(tag_dir: Path, out_dir: Path, verify_hash: bool = True) -> Path:
    """Write `out_dir` as a `save_pretrained` directory from a complete checkpoint tag."""
    tag_dir, out_dir = Path(tag_dir), Path(out_dir)
    if not is_complete(tag_dir):
        raise FileNotFoundError(f"{tag_dir} is not a complete checkpoint (no complete.json)")
    require_verified(tag_dir, verify_hash, "export: ")
    meta = json.loads((tag_dir / "model_config.json").read_text())
    model = build_model(meta)
    state = consolidated_state_dict(tag_dir)
    filled = restore_tied(model, state)
    model.load_state_dict(state, strict=True)
    for names in tied_groups(model):
        params = {n: model.get_parameter(n) for n in names}
        if len({p.data_ptr() for p in params.values()}) != 1:
            raise RuntimeError(f"tie between {names} was lost on load")
    tokenizer = tag_dir / "tokenizer.json"
    model.save_pretrained(out_dir, tokenizer_file=tokenizer if tokenizer.is_file() else None)
    marker = json.loads((tag_dir / "complete.json").read_text())
    info = {"source": str(tag_dir.resolve()), "step": marker["step"], "tied_filled_in": filled}
    for name in ("feature_config.json",):
        if (tag_dir / name).is_file():
            (out_dir / name).write_text((tag_dir / name).read_text())
    (out_dir / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def convert_to_universal(tag_dir: Path, out_root: Path, verify_hash: bool = True) -> Path:
    """A copy of the checkpoint that resumes on any world size (DESIGN section 5).

    DeepSpeed's `ds_to_universal` rewrites the ZeRO partitions per parameter; our side
    files (tokenizer, configs, per-rank loader states) are copied beside them, then the
    marker, flagged `universal`, is written last as for any checkpoint. Resume with
    `--resume <out_root>`; the trainer switches DeepSpeed to `load_universal` itself.
    """
    tag_dir, out_root = Path(tag_dir), Path(out_root)
    if not is_complete(tag_dir):
        raise FileNotFoundError(f"{tag_dir} is not a complete checkpoint (no complete.json)")
    require_verified(tag_dir, verify_hash, "universal conversion: ")
    out_dir = out_root / tag_dir.name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    subprocess.run(
        [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
         "--output_folder", str(out_dir), "--inject_missing_state"],
        check=True,
    )  # fmt: skip
    for src in tag_dir.iterdir():
        if (src.suffix == ".json" and src.name != MARKER) or src.name.startswith("rank_state_"):
            shutil.copyfile(src, out_dir / src.name)
    fsync_files(out_dir)
    marker = json.loads((tag_dir / MARKER).read_text())
    marker.update(universal=True, source=str(tag_dir.resolve()), files=file_manifest(out_dir))
    write_marker(out_dir, marker)
    write_durably(out_root / "latest", out_dir.name)
    return out_dir
