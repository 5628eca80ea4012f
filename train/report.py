"""``python -m train.report RUN_DIR [RUN_DIR ...]``: tables side by side and plots.

Reads each run's ``results.json``, ``test_sisdri.csv`` and ``metrics.jsonl``;
prints the paper's table (one row per run) and, where present, the per-class
table; saves ``sisdri_hist.png`` (log-density histogram of test SI-SDRi, as in
the paper's figure) and ``val_curves.png`` when matplotlib is installed.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from .evaluate import COLUMNS, format_table


def load_run(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SystemExit(f"not a run folder: {run_dir}")
    run = {"name": run_dir.name, "dir": run_dir, "results": None, "sisdri": None, "val": []}
    if (run_dir / "results.json").exists():
        run["results"] = json.loads((run_dir / "results.json").read_text())
    if (run_dir / "test_sisdri.csv").exists():
        with open(run_dir / "test_sisdri.csv") as f:
            rows = list(csv.DictReader(f))
        run["sisdri"] = np.array([float(r["sisdri"]) for r in rows])
        run["classes"] = np.array([r["class"] for r in rows])
    if (run_dir / "metrics.jsonl").exists():
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "val":
                run["val"].append((rec["step"], rec["mean"]))
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
    """Histogram (log density) of test SI-SDRi and validation curves; [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    names = labels or [r["name"] for r in runs]
    with_values = [(n, r) for n, r in zip(names, runs) if r["sisdri"] is not None]
    if with_values:
        fig, ax = plt.subplots(figsize=(7, 4))
        lo = min(r["sisdri"].min() for _, r in with_values)
        hi = max(r["sisdri"].max() for _, r in with_values)
        bins = np.linspace(np.floor(lo), np.ceil(hi), 40)
        for name, r in with_values:
            ax.hist(r["sisdri"], bins=bins, density=True, histtype="step", linewidth=1.6,
                    label=f"{name} (mean {r['sisdri'].mean():.1f}, std {r['sisdri'].std():.1f})")
        ax.set_yscale("log")
        ax.set_xlabel("test SI-SDRi (dB)")
        ax.set_ylabel("density (log scale)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "sisdri_hist.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        saved.append(path)
    with_curves = [(n, r) for n, r in zip(names, runs) if r["val"]]
    if with_curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, r in with_curves:
            steps, means = zip(*r["val"])
            ax.plot(steps, means, marker="o", markersize=3, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("validation SI-SDRi (dB)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "val_curves.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        saved.append(path)
    return saved


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
