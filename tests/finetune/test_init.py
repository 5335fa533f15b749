"""Where a fine-tune starts: a pre-training ZeRO checkpoint (consolidated by the export
code), its run directory, or an exported model; a tokenizer mismatch is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ctal_ds.finetune.model import HeadSettings, build_task_model, check_vocabulary, resolve_init
from ctal_ds.model import CTALConfig, CTALForPretraining
from ctal_ds.tasks import SentimentTask
from ctal_ds.train.checkpoint import Checkpointer
from ctal_ds.train.components import model_meta
from ctal_ds.train.engine import build_engine


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory, process_group, sentiment_shards):
    """A pre-training run directory holding one ZeRO-2 checkpoint of a tiny model."""
    import finetune_runs

    from ctal_ds.train import ds_config

    run = tmp_path_factory.mktemp("pretraining") / "run"
    torch.manual_seed(3)
    model = CTALForPretraining(CTALConfig.preset("tiny", vocab_size=64))
    ds = ds_config.load(finetune_runs.REPO / "ds_configs" / "cpu.json")
    ds["optimizer"]["params"]["torch_adam"] = True
    engine = build_engine(model, ds, seed=3, rank=0, steps=10)
    checkpointer = Checkpointer(run / "checkpoints", 0, 1, 1, torch.distributed.barrier,
                                side_files={"tokenizer.json": sentiment_shards / "tokenizer.json"},
                                side_json={"model_config.json": model_meta(model)})  # fmt: skip
    checkpointer.save(engine, 7, {}, {})
    return run, {k: v.detach().clone() for k, v in model.ctal.state_dict().items()}


@pytest.mark.parametrize("where", ["run", "checkpoints", "tag"])
def test_a_zero_checkpoint_seeds_the_backbone_through_the_export_code(pretraining_run, tmp_path, where):
    run, backbone = pretraining_run
    init = {"run": run, "checkpoints": run / "checkpoints", "tag": run / "checkpoints" / "global_step7"}[where]
    model_dir = resolve_init(init, tmp_path)
    assert json.loads((model_dir / "export.json").read_text())["step"] == 7
    model = build_task_model(SentimentTask(), HeadSettings(), model_dir, scratch=False, seed=0)
    assert all(torch.equal(model.ctal.state_dict()[k], v) for k, v in backbone.items())
    assert resolve_init(init, tmp_path) == model_dir  # consolidated once, then reused


def test_an_export_directory_is_used_as_it_is(pretraining_run, tmp_path):
    run, _ = pretraining_run
    exported = resolve_init(run, tmp_path / "a")
    shutil.copytree(exported, run / "export")
    try:
        assert resolve_init(run, tmp_path / "b") == run / "export"
    finally:
        shutil.rmtree(run / "export")


def test_a_model_with_another_tokenizer_is_refused(pretraining_run, tmp_path, sentiment_shards):
    run, _ = pretraining_run
    model_dir = resolve_init(run, tmp_path)
    check_vocabulary(model_dir, sentiment_shards / "tokenizer.json", 64)
    other = tmp_path / "other_tokenizer.json"
    other.write_text('{"another": "vocabulary"}')
    with pytest.raises(ValueError, match="token ids would mean other words"):
        check_vocabulary(model_dir, other, 64)
    with pytest.raises(ValueError, match="vocab_size 64"):
        check_vocabulary(model_dir, sentiment_shards / "tokenizer.json", 65)


def test_something_that_is_no_model_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model directory"):
        resolve_init(tmp_path, tmp_path / "work")
