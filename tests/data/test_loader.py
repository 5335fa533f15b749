"""The streaming loader over real tar shards, with real DataLoader worker processes."""

from __future__ import annotations

import itertools
import os
import pickle
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from shard_factory import (
    VOCAB_SIZE,
    npy_bytes,
    overwrite_with_garbage,
    truncate,
    truncate_at_member,
    write_shards,
)

from ctal_ds.data.collate import PretrainCollator
from ctal_ds.data.loader import (
    BatchConfig,
    DataDamageError,
    LoaderConfig,
    build_eval_loader,
    build_pretrain_loader,
)
from ctal_ds.data.masking import MASK_ID, PAD_ID

COLLATOR = PretrainCollator(pad_id=PAD_ID, mask_id=MASK_ID, vocab_size=VOCAB_SIZE, seed=11)


def config(num_workers: int = 2, **batch) -> LoaderConfig:
    batching = {"max_frames_per_batch": 1200, "max_batch_size": 8, "bucket_buffer": 24, **batch}
    return LoaderConfig(batch=BatchConfig(**batching), num_workers=num_workers, seed=5)


def take(loader, n: int) -> list[dict]:
    batches = list(itertools.islice(iter(loader), n))
    loader.close()
    return batches


def keys_by_epoch(loader, epochs: int) -> dict[int, list[str]]:
    """Keys per worker epoch, reading until every worker of the rank has finished ``epochs`` epochs."""
    seen: dict[int, list[str]] = {e: [] for e in range(epochs)}
    for batch in loader:
        position = loader.last_batch_position
        if position.epoch < epochs:
            seen[position.epoch].extend(batch["keys"])
        if loader.epoch >= epochs:
            break
    loader.close()
    return seen


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        for name, value in x.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, y[name]), name


def test_each_epoch_reads_every_sample_once_across_2_ranks_x_2_workers(tmp_path):
    fixture = write_shards(tmp_path, [7, 12, 9, 10, 5, 11, 8, 6, 10, 9])
    per_rank = [keys_by_epoch(build_pretrain_loader(tmp_path, config(), COLLATOR, rank, 2), 2) for rank in (0, 1)]
    for epoch in (0, 1):
        seen = per_rank[0][epoch] + per_rank[1][epoch]
        assert Counter(seen) == Counter(fixture.samples.keys()), f"epoch {epoch}: duplicates or gaps"
        shards_of = [{fixture.shard_of[k] for k in keys[epoch]} for keys in per_rank]
        assert not shards_of[0] & shards_of[1], "ranks share a shard"
    # The shard order is dealt afresh each epoch.
    assert set(per_rank[0][0]) != set(per_rank[0][1])


def test_ranks_with_unequal_data_yield_any_step_budget(tmp_path):
    write_shards(tmp_path, [20, 2, 20, 2, 20, 2, 20, 2])  # rank 1's shards hold far fewer samples
    budget = 40  # several epochs for rank 1
    counts = [len(take(build_pretrain_loader(tmp_path, config(), COLLATOR, r, 2), budget)) for r in (0, 1)]
    assert counts == [budget, budget]


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_pass_gives_every_rank_the_same_batch_count_and_each_sample_once(tmp_path, world_size):
    fixture = write_shards(tmp_path, [3, 17, 5, 11, 9], frames=(20, 400))
    loaders = [build_eval_loader(tmp_path, config(), COLLATOR, r, world_size) for r in range(world_size)]
    passes = [list(loader) for loader in loaders]
    assert len({len(p) for p in passes}) == 1, [len(p) for p in passes]
    keys = [k for p in passes for batch in p for k in batch["keys"]]
    assert Counter(keys) == Counter(fixture.samples.keys())
    # A second pass is the same pass.
    assert [b["keys"] for b in list(loaders[0])] == [b["keys"] for b in passes[0]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_loader_continues_with_the_next_unseen_batches(tmp_path, num_workers):
    write_shards(tmp_path, [9, 12, 10, 7, 11, 8, 10, 9])
    cfg = config(num_workers)
    uninterrupted = take(build_pretrain_loader(tmp_path, cfg, COLLATOR, 0, 2), 30)  # > 2 epochs

    resumed: list[dict] = []
    state = None
    for stop in (7, 18, 30):  # interrupted twice: mid-epoch, and after a rotation of the workers
        loader = build_pretrain_loader(tmp_path, cfg, COLLATOR, 0, 2)
        if state is not None:
            loader.load_state_dict(state)
        resumed += take(loader, stop - len(resumed))
        state = pickle.loads(pickle.dumps(loader.state_dict()))
    assert_batches_equal(resumed, uninterrupted)


def test_resume_under_another_layout_is_refused_or_restarts_at_the_next_epoch(tmp_path, caplog):
    write_shards(tmp_path, [6] * 8)
    loader = build_pretrain_loader(tmp_path, config(2), COLLATOR, 0, 2)
    take(loader, 1)  # worker 0 is inside epoch 0, so epoch 1 is the first one no worker started
    state = loader.state_dict()
    other = build_pretrain_loader(tmp_path, config(1), COLLATOR, 0, 2)
    with pytest.raises(ValueError, match="num_workers 2 -> 1"):
        other.load_state_dict(state)
    other.load_state_dict(state, strict=False)
    take(other, 1)
    assert other.last_batch_position.epoch == 1 and other.last_batch_position.index == 0
    assert "starting afresh at epoch 1" in caplog.text


def test_too_few_shards_for_ranks_x_workers_is_refused_with_the_fix(tmp_path):
    write_shards(tmp_path, [4, 4, 4])
    with pytest.raises(ValueError) as error:
        build_pretrain_loader(tmp_path, config(2), COLLATOR, 0, 2)
    message = str(error.value)
    for expected in ("3 shard(s)", "2 rank(s) x 2 loader worker(s)", "at least 4", "num_workers", "--samples-per-shard"):
        assert expected in message


def test_damaged_shards_are_skipped_named_in_a_warning_and_counted(tmp_path, caplog):
    fixture = write_shards(tmp_path, [8] * 6)
    truncate(fixture.paths[1], 0.5)
    overwrite_with_garbage(fixture.paths[3])
    truncate_at_member(fixture.paths[4], 12)  # 4 samples of 3 members: tar cannot tell, the manifest can
    damaged = {str(fixture.paths[i]) for i in (1, 3, 4)}
    loader = build_pretrain_loader(tmp_path, config(), COLLATOR, 0, 1)
    seen = set(keys_by_epoch(loader, 2)[1])
    assert set(loader.damage.bad_shards) == damaged
    for shard in damaged:
        assert shard in caplog.text
    intact = {k for k, path in fixture.shard_of.items() if str(path) not in damaged}
    assert intact <= seen <= set(fixture.samples)
    assert not any(fixture.shard_of[k] == fixture.paths[3] for k in seen)
    assert "holds 4 samples, the manifest lists 8" in loader.damage.bad_shards[str(fixture.paths[4])]


def test_more_damaged_shards_than_the_limit_stop_the_job_naming_them(tmp_path):
    fixture = write_shards(tmp_path, [8] * 6)
    overwrite_with_garbage(fixture.paths[0])
    truncate(fixture.paths[5], 0.3)
    cfg = LoaderConfig(batch=config().batch, num_workers=2, max_bad_shards=1)
    with pytest.raises(DataDamageError, match="more than max_bad_shards=1") as error:
        take(build_pretrain_loader(tmp_path, cfg, COLLATOR, 0, 1), 50)
    assert str(fixture.paths[0]) in str(error.value) and str(fixture.paths[5]) in str(error.value)


def test_malformed_samples_are_dropped_and_reported_with_key_and_shard(tmp_path, caplog):
    bad = {
        "spk0-0001": {"tokens.npy": None},  # member missing
        "spk0-0003": {"feats.npy": npy_bytes(np.zeros((50, 80), np.float16))},  # wrong feature dim
        "spk1-0002": {"feats.npy": npy_bytes(np.zeros((50, 160), np.float16))[:-10]},  # short payload
        "spk1-0004": {"json": b"{not json"},
    }
    # Column-major features, as the shard writer stores transposed spectrograms, are fine.
    fortran = {"spk0-0005": {"feats.npy": npy_bytes(np.asfortranarray(np.ones((50, 160), np.float16)))}}
    fixture = write_shards(tmp_path, [6, 6], frames=(50, 50), extra_members={**bad, **fortran})
    loader = build_eval_loader(tmp_path, config(), COLLATOR, 0, 1)
    seen = {k for batch in loader for k in batch["keys"]}
    assert seen == set(fixture.samples) - set(bad)
    assert {key for _, key in loader.damage.bad_samples} == set(bad)
    for key in bad:
        assert key in caplog.text and str(fixture.shard_of[key]) in caplog.text
    assert "missing member(s) tokens.npy" in caplog.text


class _Exploit:
    """Unpickling this creates a directory: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pickle_in_shards_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Exploit(marker))
    object_array = np.array([_Exploit(marker)], dtype=object)
    extra = {
        "spk0-0000": {"pyd": payload, "pickle": payload},
        "spk0-0001": {"feats.npy": npy_bytes(object_array, allow_pickle=True)},
    }
    fixture = write_shards(tmp_path / "shards", [4, 4], extra_members=extra)
    loader = build_eval_loader(tmp_path / "shards", config(), COLLATOR, 0, 1)
    seen = {k for batch in loader for k in batch["keys"]}
    assert not marker.exists()
    assert "spk0-0000" in seen  # the extra members are ignored, the sample is fine
    assert seen == set(fixture.samples) - {"spk0-0001"}
    reason = loader.damage.bad_samples[(str(fixture.shard_of["spk0-0001"]), "spk0-0001")]
    assert "object arrays need pickle" in reason


def test_bucketing_keeps_padding_low_within_the_frame_budget(tmp_path):
    write_shards(tmp_path, [40] * 4, frames=(20, 400))
    budget = 2000

    def padding(bucketing: bool) -> float:
        cfg = config(1, max_frames_per_batch=budget, max_batch_size=32, bucket_buffer=160, bucketing=bucketing)
        batches = [b["audio_mask"] for b in build_eval_loader(tmp_path, cfg, COLLATOR, 0, 1)]
        for mask in batches:
            assert mask.numel() <= budget or mask.shape[0] == 1
        return 1 - sum(int(m.sum()) for m in batches) / sum(m.numel() for m in batches)

    bucketed, unbucketed = padding(True), padding(False)
    assert bucketed < 0.08
    assert unbucketed > 3 * bucketed


def test_worker_stream_pickles_for_spawned_workers(tmp_path):
    write_shards(tmp_path, [4] * 4)
    loader = build_pretrain_loader(tmp_path, config(), COLLATOR, 1, 2)
    clone = pickle.loads(pickle.dumps(loader.dataset()))
    assert clone.layout == loader.layout and clone.shards == loader.shards


def test_shards_given_as_paths_or_brace_pattern_stream_like_the_manifest(tmp_path):
    fixture = write_shards(tmp_path, [5] * 4)
    pattern = str(tmp_path / "shard-{000000..000003}.tar")
    streams = [
        [b["keys"] for b in take(build_pretrain_loader(source, config(), COLLATOR, 0, 2), 6)]
        for source in (tmp_path, [str(p) for p in fixture.paths], pattern)
    ]
    assert streams[0] == streams[1] == streams[2]


def test_workers_outlive_the_sigterm_slurm_sends_to_every_process_of_a_job(tmp_path):
    # scancel and pre-emption signal every process of a job step; the rank handles the
    # signal (checkpoint, then exit), so its workers must not die of it first.
    import signal

    import psutil

    write_shards(tmp_path, [9, 12, 10, 7])
    loader = build_pretrain_loader(tmp_path, config(num_workers=2), COLLATOR, 0, 1)
    uninterrupted = take(build_pretrain_loader(tmp_path, config(num_workers=2), COLLATOR, 0, 1), 8)
    earlier = {p.pid for p in psutil.Process().children()}  # multiprocessing's helpers among them
    stream = iter(loader)
    got = [next(stream) for _ in range(2)]
    workers = [p for p in psutil.Process().children() if p.pid not in earlier]
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGUSR1)
    got += [next(stream) for _ in range(6)]
    assert_batches_equal(got, uninterrupted)
    assert all(w.is_running() for w in workers)
    loader.close()
    psutil.wait_procs(workers, timeout=60)
    left = [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"workers {left} still running 60 s after the loader closed"


def test_a_terminated_worker_leaves_after_the_grace_period(monkeypatch, tmp_path):
    # The other side of the deferral: a worker the parent terminates (multiprocessing
    # does so at interpreter exit) must still go, or the parent's final join hangs.
    import signal

    import psutil

    from ctal_ds.data import loader as loader_module

    monkeypatch.setattr(loader_module, "WORKER_TERM_GRACE_S", 1)
    write_shards(tmp_path, [9, 12])
    loader = build_pretrain_loader(tmp_path, config(num_workers=2), COLLATOR, 0, 1)
    earlier = {p.pid for p in psutil.Process().children()}  # multiprocessing's helpers among them
    stream = iter(loader)
    next(stream)
    workers = [p for p in psutil.Process().children() if p.pid not in earlier]
    # torch's SIGCHLD handler raises in this process at whatever line runs when a
    # registered worker dies; the two workers may die far apart on a loaded machine, so
    # the second raise could land outside any `pytest.raises`. Unregistered, a dead
    # worker is reported by the next fetch only, once.
    import gc
    import warnings

    from torch.utils.data._utils import signal_handling
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    # type(), not isinstance(): isinstance on a dead weakref proxy among gc's objects raises
    with warnings.catch_warnings():  # the scan touches deprecated torch module attributes
        warnings.simplefilter("ignore")
        (torch_iterator,) = [o for o in gc.get_objects() if type(o) is _MultiProcessingDataLoaderIter]
    signal_handling._remove_worker_pids(id(torch_iterator))
    torch_iterator._worker_pids_set = False  # its shutdown must not unregister them again
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"workers still running 60 s after SIGTERM (grace 1 s): {alive}"
    assert len(gone) == len(workers)
    # The next fetch fails: torch names the dead worker, or its queue refuses the
    # connection to a worker that is gone.
    with pytest.raises((RuntimeError, ConnectionError)):
        for _ in range(100):
            next(stream)
            time.sleep(0.1)
