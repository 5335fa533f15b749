"""Check the MLflow UI of a tracking store in headless Chromium, as a user would see it.

    python launch/ui_check.py                                  # runs/demo/mlflow.db
    python launch/ui_check.py --tracking-uri sqlite:///runs/ft/mlflow.db --experiment ctal-emotion
    python launch/ui_check.py --skip-without-browser           # exit 0 where Chromium cannot be had

For each experiment with fine-tune results (runs tagged role=result; `--experiment`
chooses) it starts `mlflow server` on the store, opens the experiment's runs page and
the compare view of its result runs, and checks that the runs are listed by name and
that the compare view shows each run's variant tag and the task's test metrics. Both
pages are saved as PNG screenshots (`--out`, default: `ui/` beside a sqlite store) and
their paths printed. Exit status: 0 when every check passes, 1 when one fails (the
reason is printed), 2 when Chromium is missing and cannot be installed (0 with
`--skip-without-browser`). Missing chromium / chromium-driver are installed with
apt-get when run as root, unless `--no-install`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ctal_ds.tracking_ui import BrowserUnavailable, ServerStartError, check_ui

DEFAULT_STORE = Path("runs/demo/mlflow.db")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", help=f"default: $MLFLOW_TRACKING_URI, else sqlite:///{DEFAULT_STORE}")
    p.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable)")
    p.add_argument("--out", type=Path, help="folder for the screenshots")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install a missing Chromium")
    p.add_argument("--skip-without-browser", action="store_true",
                   help="exit 0, saying why, when Chromium cannot be had")  # fmt: skip
    p.add_argument("--server-timeout", type=float, default=300.0, help="seconds to wait for mlflow server")
    p.add_argument("--page-timeout", type=float, default=180.0, help="seconds to wait for a page's content")
    args = p.parse_args(argv)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.resolve()}"
    store = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    if store is not None and not store.is_file():
        # mlflow server would create an empty store there.
        print(f"ui_check: no tracking store at {store}; give --tracking-uri", file=sys.stderr)
        return 1
    out = args.out or (store.parent / "ui" if store is not None else Path("ui"))
    try:
        checks = check_ui(uri, out, args.experiment, install=not args.no_install,
                          server_timeout=args.server_timeout, page_timeout=args.page_timeout)  # fmt: skip
    except BrowserUnavailable as err:
        print(f"ui_check: cannot check the MLflow UI in a browser here: {err.reason}", file=sys.stderr)
        return 0 if args.skip_without_browser else 2
    except (LookupError, ServerStartError) as err:
        print(f"ui_check: {err}", file=sys.stderr)
        return 1
    failed = 0
    for check in checks:
        status = "ok" if check.ok else "FAILED"
        print(f"ui_check: {check.experiment}: {status}: {len(check.names_on_compare)} run(s) compared, "
              f"metrics {', '.join(check.metrics_on_compare) or 'none'}")  # fmt: skip
        for problem in check.problems:
            print(f"ui_check: {check.experiment}: {problem}", file=sys.stderr)
        for png in (check.experiment_png, check.compare_png):
            if png is not None:
                print(f"  screenshot: {png}")
        failed += not check.ok
    if failed:
        print(f"ui_check: {failed} of {len(checks)} experiment(s) failed the UI check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
