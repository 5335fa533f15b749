"""Runs of the tracking store side by side: one table row per fine-tune, bar charts per metric.

Every fine-tune run is tagged ``task``, ``variant``, ``init``, ``fold``, ``fraction`` and
``role``: ``result`` for a run whose test metrics are the reported ones (a single-split
task, one chosen fold, or the average over IEMOCAP's folds), ``fold`` for the per-fold
runs behind an average. Test metrics are logged as ``test/<metric>``; for the average
over folds ``test/<metric>`` is the mean and ``test/<metric>_std`` the spread.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctal_ds.tasks.plots import plot_data_efficiency

# The numbers of paper tables 1-4, per task, in the order shown.
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "emotion": ("wa", "ua"),
    "sentiment": ("acc2", "f1", "mae", "pearson_r"),
    "speaker": ("eer", "min_dcf", "centroid_eer"),
}
LOWER_IS_BETTER = {"mae", "eer", "min_dcf", "centroid_eer"}
# The comparisons a summary states: each variant against its baseline.
BASELINES = {"pretrained": "scratch", "probe": "probe_random"}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One fine-tune's reported test metrics, whatever store they came from."""

    task: str
    variant: str
    fraction: float
    finished: bool
    metrics: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class RunRow:
    run_id: str
    experiment: str
    task: str
    variant: str
    init: str
    fold: str
    fraction: float
    role: str
    status: str
    start_time: int
    metrics: dict[str, float]


def load_runs(uri: str, experiments: Sequence[str] = (), include_folds: bool = False) -> list[RunRow]:
    """Fine-tune runs of the store at ``uri`` (all experiments whose runs carry a task tag
    when ``experiments`` is empty), oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if experiments:
        found = [client.get_experiment_by_name(name) for name in experiments]
        missing = [n for n, e in zip(experiments, found) if e is None]
        if missing:
            raise LookupError(f"no experiment named {missing} in {uri}")
    else:
        found = client.search_experiments()
    ids = [e.experiment_id for e in found]
    if not ids:
        return []
    names = {e.experiment_id: e.name for e in found}
    query = "tags.task != ''" if include_folds else "tags.role = 'result'"
    rows = []
    for run in _all_runs(client, ids, query):
        tags = run.data.tags
        rows.append(
            RunRow(
                run.info.run_id, names[run.info.experiment_id], tags.get("task", ""), tags.get("variant", ""),
                tags.get("init", ""), tags.get("fold", ""), float(tags.get("fraction", 1.0)), tags.get("role", ""),
                run.info.status, run.info.start_time or 0,
                {k[5:]: v for k, v in run.data.metrics.items() if k.startswith("test/")},
            )
        )  # fmt: skip
    return sorted(rows, key=lambda r: (r.task, r.start_time))


def _all_runs(client, experiment_ids: list[str], query: str):
    token = None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def markdown_table(rows: Sequence[RunRow]) -> str:
    """One table per task (their metrics differ), rows in run order."""
    out = []
    for task in sorted({r.task for r in rows}):
        metrics = KEY_METRICS.get(task) or tuple(sorted({k for r in rows if r.task == task for k in r.metrics}))
        header = ["variant", "init", "fold", "fraction", "status", *metrics, "run"]
        out += [f"### {task}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for r in (r for r in rows if r.task == task):
            cells = [r.variant, _short(r.init), r.fold, f"{r.fraction:g}", r.status.lower()]
            cells += [_fmt(r.metrics.get(m)) for m in metrics] + [r.run_id[:8]]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _short(path: str) -> str:
    parts = Path(path).parts
    return path if len(parts) <= 2 else str(Path(*parts[-2:]))


def write_csv(rows: Sequence[RunRow], path: Path) -> Path:
    import csv

    metric_names = sorted({k for r in rows for k in r.metrics})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "variant", "init", "fold", "fraction", "role", "status", "run_id", *metric_names])
        for r in rows:
            writer.writerow([r.task, r.variant, r.init, r.fold, r.fraction, r.role, r.status, r.run_id,
                             *[r.metrics.get(m, "") for m in metric_names]])  # fmt: skip
    return path


def bar_charts(rows: Sequence[RunRow], out_dir: Path) -> list[Path]:
    """Per task and key metric, one bar per variant (mean over its full-data runs; the
    error bar is the spread over runs or over folds when there is one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    for task in sorted({r.task for r in rows}):
        task_rows = [r for r in rows if r.task == task and r.fraction == 1.0 and r.status == "FINISHED"]
        for metric in KEY_METRICS.get(task, ()):
            values: dict[str, list[float]] = defaultdict(list)
            spread: dict[str, list[float]] = defaultdict(list)
            for r in task_rows:
                if metric in r.metrics:
                    values[r.variant].append(r.metrics[metric])
                    if f"{metric}_std" in r.metrics:
                        spread[r.variant].append(r.metrics[f"{metric}_std"])
            if not values:
                continue
            variants = list(values)
            means = [sum(values[v]) / len(values[v]) for v in variants]
            errors = [_spread(values[v], spread[v]) for v in variants]
            fig = Figure(figsize=(1.1 * len(variants) + 2.5, 3.4))
            ax = fig.add_subplot()
            ax.bar(range(len(variants)), means, yerr=errors, capsize=4, color="C0")
            ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
            better = "lower" if metric in LOWER_IS_BETTER else "higher"
            ax.set(ylabel=metric, title=f"{task}: test {metric} ({better} is better)")
            ax.grid(axis="y", alpha=0.3)
            path = Path(out_dir) / f"{task}_{metric}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            FigureCanvasAgg(fig)
            fig.savefig(path, dpi=110, bbox_inches="tight")
            written.append(path)
    return written


def _spread(values: list[float], stds: list[float]) -> float:
    if len(values) > 1:
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    finite = [s for s in stds if not math.isnan(s)]
    return finite[0] if finite else 0.0


def summary_rows(outcomes: Sequence[Outcome], papers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per (task, variant, fraction): each key metric's mean over seeds, its
    spread (sample std over seeds; with one seed, the std over folds if any) and n.
    ``papers`` names each variant's row of paper table 4."""
    groups: dict[tuple[str, str, float], list[Outcome]] = {}
    for r in outcomes:
        groups.setdefault((r.task, r.variant, r.fraction), []).append(r)
    rows = []
    for (task, variant, fraction), runs in groups.items():
        paper = (papers or {}).get(variant, "")
        done = [r for r in runs if r.finished]
        row = {"task": task, "variant": variant, "table4": paper, "fraction": fraction, "n": len(done),
               "finished": len(done) == len(runs)}  # fmt: skip
        for m in KEY_METRICS.get(task, ()):
            values = [r.metrics[m] for r in done if m in r.metrics]
            if not values:
                row[m] = row[f"{m}_std"] = None
                continue
            row[m] = sum(values) / len(values)
            if len(values) > 1:
                row[f"{m}_std"] = math.sqrt(sum((v - row[m]) ** 2 for v in values) / (len(values) - 1))
            else:
                row[f"{m}_std"] = done[0].metrics.get(f"{m}_std")
        rows.append(row)
    return rows


def claims(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each variant against its baseline (BASELINES) per task, fraction and key metric.

    A difference is called only when it exceeds the spread: larger than the sum of the
    two standard deviations over seeds, with at least two seeds on each side; anything
    else is "within spread" (or "n < 2").
    """
    index = {(r["task"], r["variant"], r["fraction"]): r for r in rows}
    out = []
    for (task, variant, fraction), row in index.items():
        baseline = index.get((task, BASELINES.get(variant, ""), fraction))
        if baseline is None:
            continue
        for m in KEY_METRICS.get(task, ()):
            a, b = row.get(m), baseline.get(m)
            if a is None or b is None:
                continue
            diff = a - b
            spread = (row.get(f"{m}_std") or 0.0) + (baseline.get(f"{m}_std") or 0.0)
            gain = -diff if m in LOWER_IS_BETTER else diff
            if min(row["n"], baseline["n"]) < 2:
                verdict = "n < 2"
            elif abs(diff) <= spread:
                verdict = "within spread"
            else:
                verdict = "better" if gain > 0 else "worse"
            out.append({"task": task, "fraction": fraction, "variant": variant, "baseline": baseline["variant"],
                        "metric": m, "value": a, "baseline_value": b, "difference": diff, "spread": spread,
                        "verdict": verdict})  # fmt: skip
    return out


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of ``summary_rows`` (mean ± std over seeds, n) and the ``claims``."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        metrics = KEY_METRICS.get(task, ())
        lines += [f"### {task}", "", "| variant | table 4 | fraction | n | " + " | ".join(metrics) + " |",
                  "| --- | --- | --- | --- |" + " --- |" * len(metrics)]  # fmt: skip
        for r in sorted((r for r in rows if r["task"] == task), key=lambda r: r["fraction"]):
            cells = [_cell(r.get(m), r.get(f"{m}_std")) for m in metrics]
            lines.append(f"| {r['variant']} | {r['table4']} | {r['fraction']:g} | {r['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    stated = claims(rows)
    if stated:
        lines += ["### against the baseline (called only beyond the sum of both spreads)", "",
                  "| task | fraction | variant | vs | metric | difference | spread | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for c in stated:
            lines.append(f"| {c['task']} | {c['fraction']:g} | {c['variant']} | {c['baseline']} | {c['metric']} | "
                         f"{c['difference']:+.4f} | {c['spread']:.4f} | {c['verdict']} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def _cell(value: float | None, std: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if std is None or std != std else f"{value:.4f} ± {std:.4f}"


def outcomes_of(rows: Sequence[RunRow]) -> list[Outcome]:
    return [Outcome(r.task, r.variant, r.fraction, r.status == "FINISHED", r.metrics) for r in rows]


def data_efficiency_plots(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Figures 2-3: per task and key metric, one line per variant over the fractions,
    the spread over seeds as error bars (rows from ``comparison_rows``)."""
    written = []
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task and r["n"] > 0]
        if len({r["fraction"] for r in task_rows}) < 2:
            continue
        for metric in KEY_METRICS.get(task, ()):
            curves: dict[str, list[tuple[float, float, float]]] = {}
            for r in task_rows:
                if r.get(metric) is not None:
                    curves.setdefault(r["variant"], []).append((r["fraction"], r[metric], r.get(f"{metric}_std") or 0.0))
            if curves:
                written.append(plot_data_efficiency(curves, metric, Path(out_dir) / f"data_efficiency_{task}_{metric}.png"))
    return written
