"""The MLflow UI of a store written by the project's own tracking code, checked in Debian's
headless Chromium (launch/ui_check.py, ctal_ds.tracking_ui).

The store holds fine-tune runs as ctal_ds.finetune.run makes them (names from
``run_name``, tags from ``run_identity``, written by ``Tracker``): two experiments with
result runs, a per-fold run that comparisons leave out, and a pre-training run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest
from prerequisites import require_module, skip_or_fail

from ctal_ds import tracking_ui
from ctal_ds.finetune.cli import build_parser, config_from_args
from ctal_ds.finetune.run import run_identity, run_name
from ctal_ds.train.config import TrackingConfig
from ctal_ds.train.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]

# (task, variant, fold, fraction, seed, role, test metrics)
RUNS = [
    ("emotion", "pretrained", "fold1", 0.1, 1, "result", {"ua": 0.61, "wa": 0.64}),
    ("emotion", "pretrained", "fold1", 0.1, 2, "result", {"ua": 0.58, "wa": 0.60}),
    ("emotion", "scratch", "fold1", 0.1, 1, "result", {"ua": 0.41, "wa": 0.45}),
    ("emotion", "probe", "fold2", 1.0, 1, "fold", {"ua": 0.50, "wa": 0.52}),
    ("sentiment", "pretrained", "test", 1.0, 1, "result", {"acc2": 0.71, "f1": 0.70, "mae": 0.83, "pearson_r": 0.4}),
    ("sentiment", "scratch", "test", 1.0, 1, "result", {"acc2": 0.55, "f1": 0.52, "mae": 1.02, "pearson_r": 0.1}),
]


def _finetune_run(root: Path, uri: str, task, variant, fold, fraction, seed, role, metrics) -> str:
    """One fine-tune's run as ctal_ds.finetune.run.finetune_split logs it, without training."""
    out = root / f"{task}-{variant}-{fold}-{fraction:g}-{seed}"
    init = ["--scratch"] if variant == "scratch" else ["--init", str(root)]
    args = build_parser().parse_args(
        ["--task", task, "--shards", str(root / "shards"), "--out", str(out), *init, "--variant", variant,
         "--fraction", str(fraction), "--seed", str(seed), "--tracking-uri", uri, "--experiment", f"ctal-{task}"]
    )  # fmt: skip
    cfg = config_from_args(args)
    tags, params = run_identity(cfg, variant, fold, role)
    tracker = Tracker(dataclasses.replace(cfg.tracking, run_name=run_name(cfg, variant, fold)), out)
    run_id = tracker.start(None, params, tags)
    for step in range(1, 4):
        tracker.log_metrics(step, {"train/loss": 2.0 / step})
    tracker.log_metrics(3, {f"test/{k}": v for k, v in metrics.items()})
    tracker.finish()
    assert tracker.active, "the tracker fell back to metrics.jsonl"
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ui-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for spec in RUNS:
        _finetune_run(root, uri, *spec)
    pretrain = Tracker(TrackingConfig(experiment="ctal-pretrain", run_name="pretrain-tiny", uri=uri), root / "pt")
    pretrain.start(None, {"steps": 3}, {})
    pretrain.log_metrics(3, {"train/loss": 5.0})
    pretrain.finish()
    return uri


@pytest.fixture(scope="module")
def browser() -> tuple[str, str]:
    """Chromium and chromedriver, installed with apt-get where missing (as root)."""
    require_module("selenium", "the MLflow UI check drives Chromium with it; pip install -e '.[dev]'")
    start = time.monotonic()
    try:
        paths = tracking_ui.ensure_browser()
    except tracking_ui.BrowserUnavailable as err:
        skip_or_fail(f"cannot check the MLflow UI in Chromium here: {err.reason}")
    print(f"chromium and chromedriver ready in {time.monotonic() - start:.1f}s: {paths}")
    return paths


def _launch_ui_check():
    spec = importlib.util.spec_from_file_location("launch_ui_check", REPO / "launch" / "ui_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _distinct_colours(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    return len(colours) if colours is not None else 1 << 16


def _expected_by_experiment(uri):
    return {name: runs for name, _, runs in tracking_ui.expected_runs(uri)}


def test_expected_runs_are_the_result_runs_of_fine_tune_experiments(store):
    wanted = _expected_by_experiment(store)
    assert sorted(wanted) == ["ctal-emotion", "ctal-sentiment"]  # not ctal-pretrain
    names = {r.name: r for r in wanted["ctal-emotion"]}
    # The per-fold run is not a result: comparisons leave it out.
    assert sorted(names) == ["emotion-pretrained-fold1-f0.1-seed1", "emotion-pretrained-fold1-f0.1-seed2",
                             "emotion-scratch-fold1-f0.1-seed1"]  # fmt: skip
    assert names["emotion-scratch-fold1-f0.1-seed1"].variant == "scratch"
    assert {r.metrics for r in wanted["ctal-emotion"]} == {("test/wa", "test/ua")}
    assert {r.metrics for r in wanted["ctal-sentiment"]} == {("test/acc2", "test/f1", "test/mae", "test/pearson_r")}
    with pytest.raises(LookupError, match="ctal-pretrain .* no runs tagged role=result"):
        tracking_ui.expected_runs(store, ["ctal-pretrain"])
    with pytest.raises(LookupError, match="no experiment named"):
        tracking_ui.expected_runs(store, ["ctal-nonesuch"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ui_check_finds_runs_variants_and_metrics_in_chromium(store, browser, tmp_path, monkeypatch, capsys):
    ui_check = _launch_ui_check()
    checks = []

    def recording(*args, **kwargs):
        result = tracking_ui.check_ui(*args, **kwargs)
        checks.extend(result)
        return result

    monkeypatch.setattr(ui_check, "check_ui", recording)
    start = time.monotonic()
    rc = ui_check.main(["--tracking-uri", store, "--out", str(tmp_path / "ui")])
    printed = capsys.readouterr()
    print(f"ui_check took {time.monotonic() - start:.1f}s")
    assert rc == 0, printed.out + printed.err
    wanted = _expected_by_experiment(store)
    assert sorted(c.experiment for c in checks) == sorted(wanted)
    for check in checks:
        runs = wanted[check.experiment]
        assert check.problems == []
        assert sorted(check.names_on_runs_page) == sorted(r.name for r in runs)
        assert sorted(check.names_on_compare) == sorted(r.name for r in runs)
        assert check.variants_on_compare == {r.name: r.variant for r in runs}
        assert set(runs[0].metrics) <= set(check.metrics_on_compare)
        for png in (check.experiment_png, check.compare_png):
            assert f"screenshot: {png}" in printed.out
            assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            # A rendered page, not one colour (a blank or failed render).
            assert _distinct_colours(png) > 16, png
    emotion = next(c for c in checks if c.experiment == "ctal-emotion")
    assert "emotion-probe-fold2-seed1" not in emotion.names_on_compare
    assert {"test/ua", "test/wa"} <= set(emotion.metrics_on_compare)
    sentiment = next(c for c in checks if c.experiment == "ctal-sentiment")
    assert "test/mae" in sentiment.metrics_on_compare
    # The server is gone once the check returns.
    log = (tmp_path / "ui" / "mlflow-server.log").read_text()
    url = re.search(r"running on (http://127\.0\.0\.1:\d+)", log).group(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ui_check_reports_what_the_pages_do_not_show(store, browser, tmp_path):
    # What the store held when the expectation was read; then a run is renamed and another
    # re-tagged, so the pages show something else and the check must say what differs.
    from mlflow import MlflowClient

    [(name, experiment_id, runs)] = tracking_ui.expected_runs(store, ["ctal-sentiment"])
    client = MlflowClient(tracking_uri=store)
    renamed, retagged = runs
    original = client.get_run(retagged.run_id).data.tags["variant"]
    client.update_run(renamed.run_id, name="sentiment-renamed")
    client.set_tag(retagged.run_id, "variant", "pretrained+no_fusion")
    try:
        with tracking_ui.ui_session(store, tmp_path / "ui") as (driver, base):
            start = time.monotonic()
            check = tracking_ui.check_experiment(driver, base, name, experiment_id, runs, tmp_path / "ui")
            print(f"both pages judged in {time.monotonic() - start:.1f}s")
    finally:
        client.update_run(renamed.run_id, name=renamed.name)
        client.set_tag(retagged.run_id, "variant", original)
    assert not check.ok
    assert f"runs page lacks run(s) ['{renamed.name}']" in check.problems
    compare = "\n".join(check.problems)
    assert f"Run Name row lacks ['{renamed.name}']" in compare
    assert f"{retagged.name} (shows 'pretrained+no_fusion', store has '{retagged.variant}')" in compare
    assert check.compare_png.is_file() and _distinct_colours(check.compare_png) > 16


def test_read_compare_pairs_variants_with_run_names_by_column():
    rows = [["Run ID:", "a1", "b2"], ["Run Name:", "emotion-scratch-fold1-seed1", "emotion-pretrained-fold1-seed1"],
            ["finetune.variant", "scratch", "pretrained"], ["variant", "scratch", "pretrained"]]  # fmt: skip
    text = "Comparing 2 Runs\nRun details\nRun ID:\nParameters\nfinetune.variant\nMetrics\nShow diff only\n" \
           "test/ua\ntest/wa\n0.5\nArtifacts\nTags\nvariant\n"  # fmt: skip
    names, variants, metrics = tracking_ui.read_compare(rows, text)
    assert names == ["emotion-scratch-fold1-seed1", "emotion-pretrained-fold1-seed1"]
    assert variants == {"emotion-scratch-fold1-seed1": "scratch", "emotion-pretrained-fold1-seed1": "pretrained"}
    assert metrics == ["test/ua", "test/wa"]
    expected = [tracking_ui.ExpectedRun("a1", names[0], "scratch", ("test/ua", "test/eer"))]
    assert tracking_ui.compare_problems(expected, names, variants, metrics) == [
        "compare view's Metrics lack ['test/eer'] (it lists ['test/ua', 'test/wa'])"
    ]
    assert tracking_ui.compare_problems(expected, names, {}, metrics)[0] == "compare view has no 'variant' row in its Tags"


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path):
    # mlflow server exits at start on a store it cannot use.
    with pytest.raises(tracking_ui.ServerStartError, match=r"(?s)exited with code 1 before http://127.0.0.1:\d+/health"
                       r".*server.log ends:.*unsupported URI 'nosuchscheme:///x'"):  # fmt: skip
        with tracking_ui.mlflow_server("nosuchscheme:///x", tmp_path / "server.log", timeout=300):
            pass


def test_a_server_that_does_not_answer_in_time_is_stopped(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(tracking_ui.ServerStartError, match=r"waited 0s for mlflow server to answer GET "
                       r"http://127.0.0.1:\d+/health \(last: "):  # fmt: skip
        with tracking_ui.mlflow_server(uri, tmp_path / "server.log", timeout=0.1):
            pass
    # Its whole process group was terminated: nothing runs with the store on its command line.
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, uri)]
    assert left == []


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_without_chromium_and_root_the_script_says_why(store, tmp_path, monkeypatch, capsys):
    require_module("selenium", "the MLflow UI check drives Chromium with it")
    ui_check = _launch_ui_check()
    # A machine without Chromium where the user is not root: nothing can be installed.
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setattr(tracking_ui.apt, "SEARCH_PATH", str(empty))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert ui_check.main(["--tracking-uri", store, "--out", str(tmp_path / "ui")]) == 2
    err = capsys.readouterr().err
    assert "cannot check the MLflow UI in a browser here: chromium, chromedriver not installed and not root" in err
    assert ui_check.main(["--tracking-uri", store, "--skip-without-browser"]) == 0
    assert "not root" in capsys.readouterr().err
    assert not (tmp_path / "ui").exists()


def test_the_script_needs_an_existing_store(tmp_path, capsys):
    ui_check = _launch_ui_check()
    assert ui_check.main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 1
    assert f"no tracking store at {tmp_path / 'none.db'}" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_a_run_name_must_be_a_whole_line_of_the_runs_page():
    seed1 = tracking_ui.ExpectedRun("a1", "emotion-scratch-fold1-seed1", "scratch", ())
    assert tracking_ui.runs_page_problems([seed1], "Run Name\nemotion-scratch-fold1-seed12\n") == [
        "runs page lacks run(s) ['emotion-scratch-fold1-seed1']"
    ]
    assert tracking_ui.runs_page_problems([seed1], "Run Name\n emotion-scratch-fold1-seed1 \n3 minutes ago") == []
