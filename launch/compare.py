"""Compare fine-tune runs from the MLflow store: a table of runs and bar charts per metric.

    python launch/compare.py                                   # runs/demo/mlflow.db
    python launch/compare.py --tracking-uri sqlite:///runs/ft/mlflow.db --experiment ctal-emotion
    MLFLOW_TRACKING_URI=http://mlflow:5000 python launch/compare.py --all --out runs/compare

Rows are the runs whose test metrics are reported (one per fine-tune; IEMOCAP's fold
averages); `--all` adds per-fold and evaluation-only runs. The table is printed as
markdown and written as CSV beside the bar charts (`--out`, default: beside a sqlite store).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ctal_ds.finetune.ablate import VARIANTS
from ctal_ds.finetune.compare import (
    bar_charts,
    data_efficiency_plots,
    load_runs,
    markdown_table,
    outcomes_of,
    summary_markdown,
    summary_rows,
    write_csv,
)

DEFAULT_STORE = Path("runs/demo/mlflow.db")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", help=f"default: $MLFLOW_TRACKING_URI, else sqlite:///{DEFAULT_STORE}")
    p.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable; default: all)")
    p.add_argument("--all", action="store_true", help="also per-fold and evaluation-only runs")
    p.add_argument("--out", type=Path, help="folder for comparison.csv and the bar charts")
    args = p.parse_args(argv)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.resolve()}"
    if uri.startswith("sqlite:///"):
        store = Path(uri[len("sqlite:///") :])
        if not store.is_file():
            # MLflow would silently create an empty store there.
            print(f"compare: no tracking store at {store}; give --tracking-uri", file=sys.stderr)
            return 1
    try:
        rows = load_runs(uri, args.experiment, include_folds=args.all)
    except LookupError as err:
        print(f"compare: {err}", file=sys.stderr)
        return 1
    if not rows:
        print(f"compare: no fine-tune runs in {uri}", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    summary = summary_rows(outcomes_of(rows), {name: v.paper for name, v in VARIANTS.items()})
    print("## over seeds\n")
    print(summary_markdown(summary))
    out = args.out or (store.parent / "compare" if uri.startswith("sqlite:///") else Path("compare"))
    csv = write_csv(rows, out / "comparison.csv")
    charts = bar_charts(rows, out) + data_efficiency_plots(summary, out)
    print(f"wrote {csv} and {len(charts)} chart(s) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
