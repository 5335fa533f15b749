"""Checkpoint directories: completeness marker, verification, resume selection, retention,
RNG state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ctal_ds.train.checkpoint import (
    MARKER,
    Checkpointer,
    CheckpointError,
    agree_on_resume,
    choose_resume,
    latest_complete,
    rank_state_file,
    resolve_resume,
    resume_spec_problem,
    rng_state,
    set_rng_state,
    verify_tag,
)


class FakeEngine:
    """Writes files where DeepSpeed would; enough to drive the Checkpointer in one process."""

    def __init__(self, fail_on_save: bool = False) -> None:
        self.fail_on_save = fail_on_save
        self.loaded: tuple[str, str] | None = None

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert save_latest is False  # `latest` is ours to write, after the marker
        path = Path(save_dir) / tag
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"client": client_state}, path / "mp_rank_00_model_states.pt")
        if self.fail_on_save:
            raise OSError("disk full")

    def load_checkpoint(self, load_dir, tag, **kwargs):
        self.loaded = (load_dir, tag)
        return str(Path(load_dir) / tag), torch.load(Path(load_dir) / tag / "mp_rank_00_model_states.pt")["client"]


def make_checkpointer(root: Path, keep_last: int = 2, side_file: Path | None = None) -> Checkpointer:
    side = {"tokenizer.json": side_file} if side_file else {}
    return Checkpointer(root, rank=0, world_size=1, keep_last=keep_last, barrier=lambda: None,
                        side_files=side, side_json={"model_config.json": {"hidden": 8}})  # fmt: skip


def test_save_writes_marker_last_with_file_hashes_and_latest(tmp_path, monkeypatch):
    import hashlib

    from ctal_ds.train import checkpoint

    def files_of(tag_dir: Path) -> dict[str, dict]:
        return {
            str(p.relative_to(tag_dir)): {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(tag_dir.rglob("*"))
            if p.is_file() and p.name != MARKER
        }

    # Each durable write, with what the tag held and which paths had been fsynced when it began.
    root = tmp_path / "ck"
    writes, fsynced = [], set()
    real_fsync, real_write = checkpoint.fsync_path, checkpoint.write_durably

    def fsync_spy(path):
        fsynced.add(Path(path))
        real_fsync(path)

    def write_spy(path, text):
        tag = root / "global_step5"
        writes.append((Path(path), files_of(tag), sorted(p.name for p in tag.iterdir()), set(fsynced)))
        real_write(path, text)

    monkeypatch.setattr(checkpoint, "fsync_path", fsync_spy)
    monkeypatch.setattr(checkpoint, "write_durably", write_spy)
    tok = tmp_path / "tok.json"
    tok.write_text('{"v": 1}')
    ckpt = make_checkpointer(root, side_file=tok)
    tag_dir = ckpt.save(FakeEngine(), 5, {"step": 5}, {"loader": {"i": 3}})
    marker = json.loads((tag_dir / MARKER).read_text())
    assert marker["step"] == 5 and marker["world_size"] == 1
    # The marker is written after every other file of the tag, once each is fsynced, and
    # `latest` after the marker.
    assert [path for path, *_ in writes] == [tag_dir / MARKER, root / "latest"]
    _, before_marker, names_before_marker, synced = writes[0]
    assert set(before_marker) == {"mp_rank_00_model_states.pt", "rank_state_0.pt", "tokenizer.json",
                                  "model_config.json"}  # fmt: skip
    assert MARKER not in names_before_marker and {tag_dir / name for name in before_marker} <= synced
    # It lists every file with its size and sha256, as they were then and are still.
    listed = {name: {"bytes": f["bytes"], "sha256": f["sha256"]} for name, f in marker["files"].items()}
    assert listed == before_marker == files_of(tag_dir)
    assert before_marker["tokenizer.json"]["sha256"] == hashlib.sha256(b'{"v": 1}').hexdigest()
    assert (root / "latest").read_text() == "global_step5"


def test_interrupted_save_leaves_no_marker_and_resume_auto_skips_it(tmp_path):
    root = tmp_path / "ck"
    ckpt = make_checkpointer(root)
    ckpt.save(FakeEngine(), 2, {"step": 2}, {})
    with pytest.raises(CheckpointError, match=r"global_step4 \(rank 0, writing its files\): OSError: disk full"):
        ckpt.save(FakeEngine(fail_on_save=True), 4, {"step": 4}, {})
    assert (root / "global_step4").is_dir() and not (root / "global_step4" / MARKER).exists()
    # A newer tag dir someone else left half-written is ignored too.
    (root / "global_step9").mkdir()
    (root / "global_step9" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    assert resolve_resume("auto", root) == root / "global_step2"
    assert (root / "latest").read_text() == "global_step2"
    with pytest.raises(FileNotFoundError, match="interrupted"):
        resolve_resume(str(root / "global_step9"), root)


def test_resume_specs(tmp_path):
    root = tmp_path / "ck"
    assert resolve_resume("auto", root) is None  # fresh run
    ckpt = make_checkpointer(root)
    ckpt.save(FakeEngine(), 3, {}, {})
    assert resolve_resume("none", root) is None
    assert resolve_resume(str(root), tmp_path / "elsewhere") == root / "global_step3"
    assert resolve_resume(str(root / "global_step3"), root) == root / "global_step3"


def test_keep_last_prunes_old_complete_and_stale_incomplete_tags(tmp_path):
    root = tmp_path / "ck"
    ckpt = make_checkpointer(root, keep_last=2)
    (root / "global_step1").mkdir(parents=True)  # interrupted long ago
    for step in (2, 4, 6):
        ckpt.save(FakeEngine(), step, {}, {})
    assert sorted(p.name for p in root.glob("global_step*")) == ["global_step4", "global_step6"]
    assert latest_complete(root) == root / "global_step6"


def test_resaving_a_step_replaces_a_partial_tag_dir(tmp_path):
    root = tmp_path / "ck"
    stale = root / "global_step4" / "zero_pp_rank_7_mp_rank_00_optim_states.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from a run with 8 ranks")
    make_checkpointer(root).save(FakeEngine(), 4, {}, {})
    assert not stale.exists()


def test_load_restores_rank_state_and_rng_and_refuses_other_world_size(tmp_path):
    root = tmp_path / "ck"
    ckpt = make_checkpointer(root)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    tag_dir = ckpt.save(FakeEngine(), 7, {"trainer": {"step": 7}}, {"loader": {"batches": 11}})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    client, rank_state = ckpt.load(FakeEngine(), tag_dir)
    assert client == {"trainer": {"step": 7}} and rank_state == {"loader": {"batches": 11}}
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    other = Checkpointer(root, 0, 4, 2, lambda: None)
    with pytest.raises(RuntimeError, match="written by 1 ranks, this job has 4.*--init-from"):
        other.load(FakeEngine(), tag_dir)


def test_rng_state_round_trip():
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def saved_steps(root: Path, *steps: int, keep_last: int = 3) -> Checkpointer:
    ckpt = make_checkpointer(root, keep_last=keep_last)
    for step in steps:
        ckpt.save(FakeEngine(), step, {"trainer": {"step": step}}, {"loader": {"batches": step}})
    return ckpt


def test_a_corrupted_newest_tag_falls_back_to_the_previous_one_naming_the_file(tmp_path, capsys):
    root = tmp_path / "ck"
    saved_steps(root, 2, 4)
    assert verify_tag(root / "global_step4") == []
    flip_middle_byte(root / "global_step4" / "mp_rank_00_model_states.pt")

    choice = choose_resume("auto", root)
    assert choice.tag_dir == root / "global_step2"
    assert [r.tag_dir for r in choice.rejected] == [root / "global_step4"]
    assert choice.rejected[0].problems[0].startswith("mp_rank_00_model_states.pt: sha256 ")
    warning = capsys.readouterr().err
    assert "WARNING: checkpoint" in warning and "global_step4 failed verification" in warning
    assert "mp_rank_00_model_states.pt: sha256" in warning
    tags = choice.tracking_tags()
    assert tags["resume_fallback"] == "global_step4"
    assert "global_step4: mp_rank_00_model_states.pt: sha256" in tags["resume_fallback.problems"]
    # Without a process group every rank decides alone, the same way.
    assert agree_on_resume("auto", root).tag_dir == root / "global_step2"
    # A checkpoints root falls back too; a named tag does not.
    assert resolve_resume(str(root), tmp_path / "elsewhere") == root / "global_step2"
    with pytest.raises(CheckpointError, match=r"global_step4: failed verification: mp_rank_00_model_states\.pt: sha256"):
        choose_resume(str(root / "global_step4"), root)


def test_resume_auto_refuses_to_start_afresh_when_no_complete_tag_verifies(tmp_path):
    root = tmp_path / "ck"
    saved_steps(root, 2, 4)
    flip_middle_byte(root / "global_step4" / "mp_rank_00_model_states.pt")
    (root / "global_step2" / rank_state_file(0)).unlink()
    with pytest.raises(CheckpointError, match=r"(?s)no checkpoint under .* passes verification.*"
                                              r"global_step4: mp_rank_00.*global_step2: rank_state_0\.pt: missing"):
        choose_resume("auto", root)


def test_a_truncated_file_is_caught_by_its_size_even_without_hashing(tmp_path):
    root = tmp_path / "ck"
    saved_steps(root, 2, 4)
    model = root / "global_step4" / "mp_rank_00_model_states.pt"
    size = model.stat().st_size
    flip_middle_byte(model)
    # Without hashing a flipped byte goes unnoticed: that is what the hash is for.
    assert verify_tag(root / "global_step4", check_hash=False) == []
    model.write_bytes(model.read_bytes()[: size // 2])
    problem = f"mp_rank_00_model_states.pt: size {size // 2} bytes, {MARKER} lists {size}"
    assert verify_tag(root / "global_step4", check_hash=False) == [problem]
    choice = choose_resume("auto", root, check_hash=False)
    assert choice.tag_dir == root / "global_step2" and choice.rejected[0].problems == [problem]


def test_rank_state_loads_weights_only_and_restores_every_rng_exactly(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    # Leave the Gaussian caches of python and numpy filled: they are part of the state.
    random.gauss(0, 1), np.random.standard_normal()
    tag_dir = saved_steps(tmp_path / "ck", 5).root / "global_step5"
    expected = (random.gauss(0, 1), random.random(), np.random.standard_normal(), np.random.rand(),
                torch.rand(2).tolist())  # fmt: skip

    state = torch.load(tag_dir / rank_state_file(0), weights_only=True)
    assert state["loader"] == {"batches": 5}
    random.seed(4), np.random.seed(4), torch.manual_seed(4)
    set_rng_state(state["rng"])
    assert (random.gauss(0, 1), random.random(), np.random.standard_normal(), np.random.rand(),
            torch.rand(2).tolist()) == expected  # fmt: skip


def test_rank_state_of_the_old_pickled_layout_still_loads(tmp_path):
    root = tmp_path / "ck"
    ckpt = saved_steps(root, 5)
    tag_dir = root / "global_step5"
    random.seed(6), np.random.seed(6), torch.manual_seed(6)
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"loader": {"batches": 5}, "rng": old_rng}, tag_dir / rank_state_file(0))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    _, rank_state = ckpt.load(FakeEngine(), tag_dir)
    assert rank_state == {"loader": {"batches": 5}}
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_prune_keeps_the_tag_resumed_from_whatever_keep_last_says(tmp_path):
    root = tmp_path / "ck"
    saved_steps(root, 2, 4, keep_last=2)
    flip_middle_byte(root / "global_step4" / "mp_rank_00_model_states.pt")
    ckpt = make_checkpointer(root, keep_last=1)
    choice = choose_resume("auto", root)
    client, _ = ckpt.load(FakeEngine(), choice.tag_dir)
    assert client["trainer"]["step"] == 2 and ckpt.resumed_from == root / "global_step2"
    for step in (4, 6):  # the damaged global_step4 is replaced
        ckpt.save(FakeEngine(), step, {"trainer": {"step": step}}, {})
    assert sorted(p.name for p in root.glob("global_step*")) == ["global_step2", "global_step6"]
    assert verify_tag(root / "global_step6") == []
    # A later job that resumed from global_step6 lets global_step2 go.
    later = make_checkpointer(root, keep_last=1)
    later.load(FakeEngine(), choose_resume("auto", root).tag_dir)
    later.save(FakeEngine(), 8, {}, {})
    assert sorted(p.name for p in root.glob("global_step*")) == ["global_step6", "global_step8"]


def test_a_missing_rank_state_is_an_error_naming_it_not_a_restart_of_loader_and_rng(tmp_path):
    root = tmp_path / "ck"
    ckpt = saved_steps(root, 2)
    tag_dir = root / "global_step2"
    (tag_dir / rank_state_file(0)).unlink()
    engine = FakeEngine()
    with pytest.raises(CheckpointError, match=r"rank_state_0\.pt: missing; .*global_step2 was written by 1 ranks"):
        ckpt.load(engine, tag_dir)
    assert engine.loaded is None and ckpt.resumed_from is None  # refused before DeepSpeed loads anything
    # Verification names it too, so --resume auto takes no such tag.
    assert verify_tag(tag_dir, check_hash=False) == ["rank_state_0.pt: missing"]


def rewrite_marker(tag_dir: Path, **changes) -> None:
    marker = json.loads((tag_dir / MARKER).read_text())
    marker.update(changes)
    (tag_dir / MARKER).write_text(json.dumps(marker))


def test_a_manifest_without_the_rank_state_of_every_rank_fails_verification(tmp_path, capsys):
    root = tmp_path / "ck"
    saved_steps(root, 2, 4)
    # A marker over a tag that lacked rank 1's state when it was written.
    rewrite_marker(root / "global_step4", world_size=2)
    problem = f"rank_state_1.pt: not listed in {MARKER} (the checkpoint was written by 2 ranks)"
    assert verify_tag(root / "global_step4") == verify_tag(root / "global_step4", check_hash=False) == [problem]
    choice = choose_resume("auto", root, check_hash=False)
    assert choice.tag_dir == root / "global_step2" and choice.rejected[0].problems == [problem]
    assert f"global_step4 failed verification and is skipped: {problem}" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"rank_state_1\.pt: not listed"):
        choose_resume(str(root / "global_step4"), root)


def test_a_save_missing_a_rank_state_leaves_no_marker_and_keeps_the_older_tags(tmp_path):
    root = tmp_path / "ck"
    saved_steps(root, 2, keep_last=1)
    # Rank 0 of two, alone: rank 1's state never appears in the tag.
    lone = Checkpointer(root, rank=0, world_size=2, keep_last=1, barrier=lambda: None)
    with pytest.raises(CheckpointError, match=r"global_step4: rank_state_1\.pt not found after every rank saved"):
        lone.save(FakeEngine(), 4, {"trainer": {"step": 4}}, {})
    assert not (root / "global_step4" / MARKER).exists()
    assert latest_complete(root) == root / "global_step2" and (root / "latest").read_text() == "global_step2"
    assert resolve_resume("auto", root) == root / "global_step2"


def test_an_elastic_resume_needs_the_rank_states_of_the_ranks_that_wrote_it_only(tmp_path):
    root = tmp_path / "ck"
    saved_steps(root, 3)
    tag_dir = root / "global_step3"
    rewrite_marker(tag_dir, universal=True)  # as launch/export.py --universal marks it
    # Two ranks resume what one rank wrote: rank 0 takes its loader state, rank 1 has none.
    _, state0 = Checkpointer(root, 0, 2, 1, lambda: None).load(FakeEngine(), tag_dir)
    _, state1 = Checkpointer(root, 1, 2, 1, lambda: None).load(FakeEngine(), tag_dir)
    assert state0 == {"loader": {"batches": 3}, "elastic": True} and state1 == {"elastic": True}
    (tag_dir / rank_state_file(0)).unlink()
    with pytest.raises(CheckpointError, match=r"rank_state_0\.pt: missing"):
        Checkpointer(root, 0, 2, 1, lambda: None).load(FakeEngine(), tag_dir)


def test_resume_spec_problems_are_found_from_the_layout_alone(tmp_path):
    root = tmp_path / "ck"
    saved_steps(root, 2)
    (root / "global_step4").mkdir()  # interrupted
    for spec in ("auto", "none", str(root), str(root / "global_step2")):
        assert resume_spec_problem(spec) is None, spec
    missing = tmp_path / "nowhere"
    assert resume_spec_problem(str(missing)) == (
        f"--resume {missing}: no such file or directory; give a checkpoint tag directory (global_step<N>/ with "
        f"{MARKER}), a checkpoints root holding such tags, auto or none"
    )  # fmt: skip
    assert "not a directory" in resume_spec_problem(str(root / "latest"))
    assert resume_spec_problem(str(root / "global_step4")).endswith(
        f"global_step4: not a complete checkpoint (no {MARKER}); it may have been interrupted while being written"
    )
    assert f"{tmp_path}: not a checkpoint: no complete global_step<N>/ tag under it" in resume_spec_problem(str(tmp_path))
    renamed = tmp_path / "my-tag"
    (root / "global_step2").rename(renamed)
    assert "a checkpoint tag directory is named global_step<N>" in resume_spec_problem(str(renamed))
    assert resume_spec_problem(str(root)).startswith(f"--resume {root}: not a checkpoint")


class BigEngine(FakeEngine):
    """Writes a model file of `size` bytes, as a real engine's state would be."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        path = Path(save_dir) / tag
        path.mkdir(parents=True, exist_ok=True)
        weights = torch.zeros(self.size // 4, dtype=torch.float32)
        torch.save({"client": client_state, "w": weights}, path / "mp_rank_00_model_states.pt")


def test_a_save_past_the_file_size_limit_is_a_checkpoint_error_naming_the_tag_the_limit_and_the_kept_tag(tmp_path):
    import resource
    import signal

    # Python ignores SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG, as on a full
    # disk; torch's own error for it ("unexpected pos ...") names no file.
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    root = tmp_path / "ck"
    ckpt = make_checkpointer(root)
    ckpt.save(BigEngine(2 << 20), 2, {"step": 2}, {})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(CheckpointError) as caught:
            ckpt.save(BigEngine(2 << 20), 4, {"step": 4}, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(caught.value)
    assert message.startswith(f"could not save checkpoint {root / 'global_step4'} (rank 0, writing its files): ")
    assert "MiB free on its file system; file size limit (RLIMIT_FSIZE) 1048576 bytes)" in message
    assert f"the newest complete checkpoint, {root / 'global_step2'}, is kept" in message
    assert not (root / "global_step4" / MARKER).exists()
    assert verify_tag(root / "global_step2") == []
    assert resolve_resume("auto", root) == root / "global_step2"
    assert (root / "latest").read_text() == "global_step2"


def test_a_failed_marker_write_leaves_the_tag_incomplete_and_says_which_step_failed(tmp_path, monkeypatch):
    from ctal_ds.train import checkpoint

    root = tmp_path / "ck"
    ckpt = make_checkpointer(root)

    def no_space(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_durably", no_space)
    with pytest.raises(CheckpointError, match=rf"global_step3 \(rank 0, writing {MARKER}\): OSError: .*No space") as caught:
        ckpt.save(FakeEngine(), 3, {"step": 3}, {})
    assert "no complete checkpoint exists yet" in str(caught.value)
    assert latest_complete(root) is None and not (root / "latest").exists()
