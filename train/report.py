"""``python -m train.report RUN_DIR [RUN_DIR ...]``: tables side by side and plots.

Reads each run's ``results.json``, ``test_sisdri.csv`` and ``metrics.jsonl``;
prints the paper's table (one row per run) and, where present, the per-class
table; saves ``sisdri_hist.png`` (log-density histogram of test SI-SDRi, as in
the paper's figure) and ``val_curves.png`` when matplotlib is installed, with the
arms of a sweep in one colour each and their seeds in shades (see ``train.plots``).
Each run folder already holds its own pictures from the end of training.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .evaluate import COLUMNS, format_table
from .plots import plot_histograms, plot_val_curves, read_test_items, read_val_curve


def load_run(run_dir: Path) -> dict:
    """A run folder's results, per-item test SI-SDRi and validation curve (whatever exists)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SystemExit(f"not a run folder: {run_dir}")
    run = {"name": run_dir.name, "dir": run_dir, "results": None, "sisdri": None}
    if (run_dir / "results.json").exists():
        run["results"] = json.loads((run_dir / "results.json").read_text())
    items = read_test_items(run_dir)
    if items is not None:
        run["sisdri"], run["classes"] = items["sisdri"], items["classes"]
    run["val_rows"] = read_val_curve(run_dir)
    run["val"] = [(r["step"], r["mean"]) for r in run["val_rows"]]
    return run


def tables(runs: list[dict]) -> str:
    test_rows = {r["name"]: r["results"]["test"] for r in runs if r["results"]}
    parts = [format_table(test_rows, COLUMNS, title="test SI-SDRi (dB)")] if test_rows else []
    class_rows = {}
    for r in runs:
        if r["results"] and len(r["results"].get("per_class", {})) <= 10:
            for cls, row in r["results"]["per_class"].items():
                class_rows[f"{r['name']} / {cls}"] = row
    if class_rows:
        parts.append(format_table(class_rows, ("count", "mean", "std", "p5", "p50", "p95"),
                                  title="per class"))
    return "\n\n".join(parts) if parts else "no results.json found (has the run finished?)"


def plot(runs: list[dict], out_dir: Path, labels: list[str] | None = None) -> list[Path]:
    """``sisdri_hist.png`` (log-density histogram of test SI-SDRi) and ``val_curves.png``
    of several runs; the arms of a sweep get a colour each, their seeds shades of it
    (runs named ``<arm>_seed<k>`` or labelled ``<arm> seed <k>``). [] without matplotlib."""
    names = labels or [r["name"] for r in runs]
    out_dir = Path(out_dir)
    saved = plot_histograms([(n, r["sisdri"]) for n, r in zip(names, runs)],
                            out_dir / "sisdri_hist.png")
    saved += plot_val_curves([(n, r.get("val_rows") or []) for n, r in zip(names, runs)],
                             out_dir / "val_curves.png")
    if not saved and runs and _no_matplotlib():
        print("matplotlib is not installed: no plots (pip install matplotlib)")
    return saved


def _no_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is None


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.report",
                                description="Compare training runs: paper-style tables and plots.")
    p.add_argument("runs", nargs="+", help="run folders written by python -m train")
    p.add_argument("--out", default=None,
                   help="folder for the PNG plots (default: the first run folder)")
    args = p.parse_args(argv)
    runs = [load_run(Path(d)) for d in args.runs]
    print(tables(runs))
    for path in plot(runs, Path(args.out) if args.out else Path(args.runs[0])):
        print(f"saved {path}")


if __name__ == "__main__":
    main()
