"""The MLflow UI as a user sees it, checked in headless Chromium.

:func:`check_ui` starts ``mlflow server`` on a tracking store (on a free loopback port,
terminated afterwards whatever happens), and for each experiment with fine-tune results
opens two pages in headless Chromium driven by selenium:

- the experiment's Runs page, which must list every result run by its name
  (``emotion-pretrained-fold1-f0.1-seed1``);
- the compare view of those runs, whose Run Name row must hold every name, whose
  ``variant`` tag row must give each run its own variant, and whose Metrics section must
  list the task's test metrics (``test/ua``, ``test/mae``, ``test/eer``, ...).

What is expected comes from the store itself (read with MlflowClient, not through the
UI): the runs tagged ``role=result``, their ``variant`` tags and ``test/`` metrics.
Both pages are saved as full-height PNG screenshots.

MLflow 3 opens an experiment on its GenAI overview (traces) unless the UI was switched to
"Model training"; the pages are opened with ``workflowType=machine_learning``, as that
switch does, and :func:`runs_page_url` gives the address to browse.

Chromium and chromedriver are Debian's (``chromium``, ``chromium-driver``), installed
with apt when missing and the process is root (:mod:`ctal_ds.apt`); selenium is told
where chromedriver is, so nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ctal_ds import apt
from ctal_ds.finetune.compare import KEY_METRICS

PACKAGES = ("chromium", "chromium-driver")
CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"
# mlflow server imports much of MLflow before it answers; CI machines are loaded.
SERVER_START_TIMEOUT_S = 300.0
# From opening a page until the runs, tags and metrics it must show are there.
PAGE_TIMEOUT_S = 180.0
# Screenshots: wide enough for the run table and a few compare columns; a compare view of
# many runs gets wider (one 200 px column per run), up to MAX_WIDTH; pages are shot at
# their full height, up to MAX_HEIGHT.
WIDTH, HEIGHT, MAX_WIDTH, MAX_HEIGHT = 1600, 1200, 4000, 8000
# A page that shows some of the runs but not all that is expected is judged once it has
# not changed for this long (its data has arrived and rendered).
SETTLE_S = 5.0
# Runs the runs page shows before "Load more".
RUNS_PAGE_ROWS = 100


class BrowserUnavailable(RuntimeError):
    """Chromium, chromedriver or selenium is missing and cannot be installed here."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ServerStartError(RuntimeError):
    """``mlflow server`` exited or did not answer in time; the message ends with its log."""


@dataclasses.dataclass(frozen=True)
class ExpectedRun:
    run_id: str
    name: str
    variant: str
    metrics: tuple[str, ...]  # the test metric keys the compare view must list
    start_time: int = 0


@dataclasses.dataclass
class ExperimentCheck:
    experiment: str
    experiment_id: str
    runs: list[ExpectedRun]
    experiment_png: Path | None = None
    compare_png: Path | None = None
    # What the pages showed: run names, {run name: variant}, metric keys.
    names_on_runs_page: list[str] = dataclasses.field(default_factory=list)
    names_on_compare: list[str] = dataclasses.field(default_factory=list)
    variants_on_compare: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics_on_compare: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------- browser


def find_browser(search_path: str) -> tuple[str | None, str | None]:
    return apt.find(CHROMIUM, search_path), apt.find(CHROMEDRIVER, search_path)


def ensure_browser(install: bool = True, search_path: str | None = None) -> tuple[str, str]:
    """Paths of chromium and chromedriver (looked for in ``search_path``, default: PATH and
    the sbin folders), installed with apt if missing (and ``install``); raises
    :class:`BrowserUnavailable` saying why they cannot be had."""
    search_path = search_path or apt.SEARCH_PATH
    try:
        import selenium  # noqa: F401
    except ImportError as err:
        raise BrowserUnavailable(f"selenium is not installed ({err}); pip install -e '.[dev]'") from err
    chromium, driver = find_browser(search_path)
    missing = [name for name, path in ((CHROMIUM, chromium), (CHROMEDRIVER, driver)) if path is None]
    if missing:
        if not install:
            raise BrowserUnavailable(f"{', '.join(missing)} not installed (apt-get install {' '.join(PACKAGES)})")
        try:
            apt.apt_install(PACKAGES, missing, lambda: all(find_browser(search_path)), search_path=search_path)
        except apt.PackagesUnavailable as err:
            raise BrowserUnavailable(err.reason) from err
        chromium, driver = find_browser(search_path)
        if chromium is None or driver is None:
            raise BrowserUnavailable(f"{', '.join(missing)} missing after installing {' '.join(PACKAGES)}")
    return chromium, driver


def _driver(chromium: str, chromedriver: str, page_timeout: float) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: Chromium's sandbox refuses to run as root (CI runs as root).
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={WIDTH},{HEIGHT}"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(page_timeout)
    driver.set_script_timeout(60)
    return driver


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def mlflow_server(store_uri: str, log: Path, timeout: float = SERVER_START_TIMEOUT_S) -> Iterator[str]:
    """``mlflow server`` on ``store_uri`` at a free loopback port; yields its base URL once
    GET /health answers 200, and terminates the server (its whole process group) on exit.
    Raises :class:`ServerStartError` naming what it waited for, with the log's end."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    if store_uri.startswith("sqlite:///"):
        # Artifacts beside the database, where ctal_ds.train.tracking puts them.
        artifacts = Path(store_uri[len("sqlite:///") :]).parent / "mlartifacts"
        command += ["--default-artifact-root", artifacts.resolve().as_uri()]
    # The job runner (GenAI scorers) starts several worker processes the UI does not need.
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_for_health(proc, url, log, timeout)
        yield url
    finally:
        _stop(proc)


def _wait_for_health(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if proc.poll() is not None:
            raise ServerStartError(
                f"mlflow server exited with code {proc.returncode} before {url}/health answered; "
                f"its log {log} ends:\n{_log_tail(log)}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
                if answer.status == 200:
                    return
                last = f"HTTP {answer.status}"
        except (urllib.error.URLError, OSError) as err:
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"waited {timeout:.0f}s for mlflow server to answer GET {url}/health (last: {last}); "
                f"its log {log} ends:\n{_log_tail(log)}"
            )
        time.sleep(1.0)


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the server's process group (it runs uvicorn workers), SIGKILL to what is
    left of it after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, so that a zombie does not keep the group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


# --------------------------------------------------------------------------- expectations


def expected_runs(store_uri: str, experiments: Sequence[str] = ()) -> list[tuple[str, str, list[ExpectedRun]]]:
    """``(experiment name, id, result runs)`` for the named experiments, or for every
    experiment that has runs tagged ``role=result`` when none are named."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store_uri)
    if experiments:
        found = [(name, client.get_experiment_by_name(name)) for name in experiments]
        missing = [name for name, e in found if e is None]
        if missing:
            raise LookupError(f"no experiment named {missing} in {store_uri}")
        chosen = [e for _, e in found]
    else:
        chosen = client.search_experiments()
    out = []
    for experiment in chosen:
        runs = []
        token = None
        while True:
            page = client.search_runs([experiment.experiment_id], "tags.role = 'result'", max_results=1000,
                                      page_token=token)  # fmt: skip
            runs += [_expected(run) for run in page]
            token = page.token
            if not token:
                break
        if runs or experiments:
            if not runs:
                raise LookupError(f"experiment {experiment.name} in {store_uri} has no runs tagged role=result")
            out.append((experiment.name, experiment.experiment_id, runs))
    return out


def _expected(run: Any) -> ExpectedRun:
    tags = run.data.tags
    tests = sorted(k for k in run.data.metrics if k.startswith("test/") and k.count("/") == 1)
    key = [f"test/{m}" for m in KEY_METRICS.get(tags.get("task", ""), ()) if f"test/{m}" in tests]
    return ExpectedRun(run.info.run_id, run.info.run_name or "", tags.get("variant", ""), tuple(key or tests),
                       run.info.start_time or 0)  # fmt: skip


# --------------------------------------------------------------------------- pages


def runs_page_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def compare_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    query = urllib.parse.urlencode(
        {"runs": json.dumps(list(run_ids)), "experiments": json.dumps([experiment_id]),
         "workflowType": "machine_learning"}  # fmt: skip
    )
    return f"{base}/#/compare-runs?{query}"


# The compare view's tables as text: every <tr> as its cells' texts, and the page's text
# (the Metrics section is a virtualised grid, not a table).
_READ_PAGE = """
return {
  text: document.body ? document.body.innerText : "",
  rows: Array.from(document.querySelectorAll("tr")).map(
    r => Array.from(r.children).map(c => c.innerText.trim())),
};
"""

# The page's height if nothing scrolled: the tallest scrolled element (MLflow scrolls a
# <main>, not the document) beyond what it shows, plus the window's height.
_FULL_HEIGHT = """
let extra = Math.max(0, document.documentElement.scrollHeight - window.innerHeight);
for (const e of document.querySelectorAll("main, div")) {
  const style = getComputedStyle(e).overflowY;
  if ((style === "auto" || style === "scroll") && e.clientHeight > 200)
    extra = Math.max(extra, e.scrollHeight - e.clientHeight);
}
return window.innerHeight + extra;
"""


def _lines(text: str) -> set[str]:
    """The page's text lines: a run name must be one (``...-seed1`` is not in ``...-seed12``)."""
    return {line.strip() for line in text.split("\n")}


def runs_page_problems(expected: Sequence[ExpectedRun], text: str) -> list[str]:
    lines = _lines(text)
    missing = [r.name for r in expected if r.name not in lines]
    return [f"runs page lacks run(s) {missing}"] if missing else []


def _sections(text: str) -> dict[str, str]:
    """The compare view's text after "Run details", cut at its section headings."""
    heads = ("Parameters", "Metrics", "Artifacts", "Tags")
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == "Run details"), None)
    sections: dict[str, list[str]] = {}
    current = None
    for line in lines[start:] if start is not None else []:
        if line.strip() in heads:
            current = line.strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line.strip())
    return {k: "\n".join(v) for k, v in sections.items()}


def read_compare(rows: Sequence[Sequence[str]], text: str) -> tuple[list[str], dict[str, str], list[str]]:
    """Run names, ``{name: variant}`` and metric keys as the compare view shows them."""
    names = next((list(r[1:]) for r in rows if r and r[0].rstrip(":") == "Run Name"), [])
    variant_row = next((list(r[1:]) for r in rows if r and r[0] == "variant"), None)
    variants = dict(zip(names, variant_row)) if variant_row is not None else {}
    metrics = [line for line in _sections(text).get("Metrics", "").split("\n") if "/" in line]
    return names, variants, metrics


def compare_problems(
    expected: Sequence[ExpectedRun], names: Sequence[str], variants: dict[str, str], metrics: Sequence[str]
) -> list[str]:
    problems = []
    missing = [r.name for r in expected if r.name not in names]
    if missing:
        problems.append(f"compare view's Run Name row lacks {missing} (it shows {list(names)})")
    if not variants:
        problems.append("compare view has no 'variant' row in its Tags")
    else:
        wrong = {r.name: (variants.get(r.name), r.variant) for r in expected
                 if r.name in names and variants.get(r.name) != r.variant}  # fmt: skip
        if wrong:
            problems.append(
                "compare view's variant tag differs from the store for "
                + ", ".join(f"{name} (shows {got!r}, store has {want!r})" for name, (got, want) in wrong.items())
            )
    wanted = sorted({m for r in expected for m in r.metrics})
    absent = [m for m in wanted if m not in metrics]
    if absent:
        problems.append(f"compare view's Metrics lack {absent} (it lists {list(metrics)})")
    return problems


def _wait_for(
    driver: Any, read: Callable[[dict], list[str]], names: Sequence[str], timeout: float, settle: float = SETTLE_S
) -> tuple[dict, list[str]]:
    """Poll the page until ``read(page)`` reports no problem; or, once it shows one of the
    run ``names`` (its data has arrived), until it stays unchanged for ``settle`` seconds;
    or until ``timeout``. The last page read and its problems."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        page = driver.execute_script(_READ_PAGE)
        problems = read(page)
        if not problems:
            return page, problems
        now = time.monotonic()
        if page != last:
            last, since = page, now
        elif not _lines(page["text"]).isdisjoint(names) and now - since >= settle:
            return page, problems
        if now > deadline:
            return page, [f"{p} after waiting {timeout:.0f}s" for p in problems]
        time.sleep(1.0)


def _close_assistant(driver: Any) -> None:
    """MLflow 3 opens its assistant panel on first load, over a third of the page."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "[data-component-id='mlflow.assistant.chat_panel.close']"):
        try:
            button.click()
        except Exception:  # a panel that went away by itself needs no closing
            pass


def _screenshot(driver: Any, png: Path, width: int) -> Path:
    start = driver.get_window_size()["height"]
    driver.set_window_size(width, start)
    time.sleep(1.0)
    height = min(MAX_HEIGHT, max(start, int(driver.execute_script(_FULL_HEIGHT)) + 200))
    driver.set_window_size(width, height)
    time.sleep(2.0)  # the grids re-render for the new size
    png.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(png)):
        raise RuntimeError(f"chromium could not write the screenshot {png}")
    return png


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def check_experiment(
    driver: Any, base: str, experiment: str, experiment_id: str, runs: list[ExpectedRun], out: Path,
    timeout: float = PAGE_TIMEOUT_S,
) -> ExperimentCheck:  # fmt: skip
    """Open the runs page and the compare view of ``runs``; screenshots go to ``out``."""
    check = ExperimentCheck(experiment, experiment_id, runs)
    # The runs table renders the rows in the window only, and loads RUNS_PAGE_ROWS at first
    # (newest first): the window is made tall enough for them, and only they are expected.
    listed = sorted(runs, key=lambda r: r.start_time, reverse=True)[:RUNS_PAGE_ROWS]
    driver.set_window_size(WIDTH, min(MAX_HEIGHT, max(HEIGHT, 500 + 40 * len(listed))))
    driver.get(runs_page_url(base, experiment_id))
    names = [r.name for r in runs]
    page, problems = _wait_for(driver, lambda p: runs_page_problems(listed, p["text"]), names, timeout)
    check.names_on_runs_page = [r.name for r in runs if r.name in _lines(page["text"])]
    check.problems += problems
    _close_assistant(driver)
    check.experiment_png = _screenshot(driver, out / f"{_slug(experiment)}-runs.png", WIDTH)

    driver.get(compare_url(base, experiment_id, [r.run_id for r in runs]))

    def compare(p: dict) -> list[str]:
        return compare_problems(runs, *read_compare(p["rows"], p["text"]))

    page, problems = _wait_for(driver, compare, names, timeout)
    check.names_on_compare, check.variants_on_compare, check.metrics_on_compare = read_compare(
        page["rows"], page["text"]
    )
    check.problems += problems
    _close_assistant(driver)
    width = min(MAX_WIDTH, max(WIDTH, 800 + 200 * len(runs)))
    check.compare_png = _screenshot(driver, out / f"{_slug(experiment)}-compare.png", width)
    return check


@contextmanager
def ui_session(
    store_uri: str, out: Path, install: bool = True, server_timeout: float = SERVER_START_TIMEOUT_S,
    page_timeout: float = PAGE_TIMEOUT_S,
) -> Iterator[tuple[Any, str]]:  # fmt: skip
    """``(selenium driver, server URL)``: mlflow server on ``store_uri`` (its log in ``out``)
    and headless Chromium, both ended on exit."""
    chromium, chromedriver = ensure_browser(install)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with mlflow_server(store_uri, out / "mlflow-server.log", server_timeout) as base:
        driver = _driver(chromium, chromedriver, page_timeout)
        try:
            yield driver, base
        finally:
            driver.quit()


def check_ui(
    store_uri: str, out: Path, experiments: Sequence[str] = (), install: bool = True,
    server_timeout: float = SERVER_START_TIMEOUT_S, page_timeout: float = PAGE_TIMEOUT_S,
) -> list[ExperimentCheck]:  # fmt: skip
    """Check the UI of ``store_uri`` for each experiment (default: those with result runs).

    Raises :class:`BrowserUnavailable` when Chromium cannot be had, :class:`LookupError`
    when the store has no such experiment or no result runs, :class:`ServerStartError`
    when mlflow server does not come up; the checks' findings are in the returned list.
    """
    ensure_browser(install)
    wanted = expected_runs(store_uri, experiments)
    if not wanted:
        raise LookupError(f"no experiment in {store_uri} has runs tagged role=result (fine-tune results)")
    with ui_session(store_uri, out, install, server_timeout, page_timeout) as (driver, base):
        return [check_experiment(driver, base, name, eid, runs, Path(out), page_timeout) for name, eid, runs in wanted]
