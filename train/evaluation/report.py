"""Runs side by side: the paper's table (one row per run), per-class rows, and plots.

The library of ``python -m train.report`` and ``python -m train.reproduce``. Reads
each run's ``results.json``, ``test_sisdri.csv`` and ``metrics.jsonl`` through
``train.run_folder``; ``plot`` saves ``sisdri_hist.png`` (log-density histogram of
test SI-SDRi, as in the paper's figure) and ``val_curves.png`` when matplotlib is
installed, the arms of a sweep in one colour each and their seeds in shades of it
(see ``train.evaluation.plots``).
Each run folder already holds its own pictures from the end of training.
"""
from __future__ import annotations

from pathlib import Path

from ..run_folder import RunFolder, RunFolderError
from .plots import plot_histograms, plot_val_curves
from .tables import CLASS_COLUMNS, COLUMNS, MAX_CLASS_ROWS, format_table


def load_run(run_dir: Path) -> dict:
    """A run folder's results, per-item test SI-SDRi and validation curve (whatever exists)."""
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise RunFolderError(f"not a run folder: {folder.path}")
    run = {"name": folder.path.name, "dir": folder.path, "results": folder.read_results(),
           "sisdri": None}
    items = folder.read_test_items()
    if items is not None:
        run["sisdri"], run["classes"] = items["sisdri"], items["classes"]
    run["val_rows"] = folder.read_metrics("val")
    run["val"] = [(r["step"], r["mean"]) for r in run["val_rows"]]
    return run


def tables(runs: list[dict]) -> str:
    """The test table of ``runs`` (one row each) and their per-class rows, as text."""
    test_rows = {r["name"]: r["results"]["test"] for r in runs if r["results"]}
    parts = [format_table(test_rows, COLUMNS, title="test SI-SDRi (dB)")] if test_rows else []
    class_rows = {}
    for r in runs:
        if r["results"] and len(r["results"].get("per_class", {})) <= MAX_CLASS_ROWS:
            for cls, row in r["results"]["per_class"].items():
                class_rows[f"{r['name']} / {cls}"] = row
    if class_rows:
        parts.append(format_table(class_rows, CLASS_COLUMNS, title="per class"))
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
