"""Writing a test evaluation: ``results.json``, ``test_sisdri.csv`` and the printed tables.

One function shared by the end of training (``Trainer.final_test``) and by
``python -m train.evaluate``, so both produce the same files in the same format.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .evaluate import format_table, per_class, summarize

RESULTS_JSON = "results.json"
ITEMS_CSV = "test_sisdri.csv"
CLASS_COLUMNS = ("count", "mean", "std", "p5", "p50", "p95")


def write_results(out_dir: Path, res: dict[str, np.ndarray], class_names: Sequence[str], *,
                  info: Optional[dict] = None, max_class_rows: int = 10,
                  title: str = "test SI-SDRi (dB)") -> dict:
    """Summarise per-source results and write them to ``out_dir``.

    Args:
        out_dir: folder for ``results.json`` and ``test_sisdri.csv`` (created if needed).
        res: the output of ``train.evaluate.evaluate``: arrays ``sisdri``, ``sisdr``,
            ``labels``, ``example`` over the valid (example, source) pairs, all (N,).
        class_names: names of the label ids.
        info: extra top-level entries of ``results.json`` (step, wall time, checkpoint...).
        max_class_rows: print the per-class table when at most this many classes are
            present (50 ESC-50 rows would bury the summary; they are in the JSON).

    Returns:
        The ``results.json`` content: ``info`` plus ``test`` (mean, std, p1..p99),
        ``per_class`` (the same per class of the reference, plus ``count``) and ``items``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(res["sisdri"])
    classes = per_class(res["sisdri"], res["labels"], class_names)
    out = {**(info or {}), "test": summary, "per_class": classes,
           "items": int(np.asarray(res["sisdri"]).size)}
    (out_dir / RESULTS_JSON).write_text(json.dumps(out, indent=2))
    with open(out_dir / ITEMS_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["example", "label", "class", "sisdr", "sisdri"])
        for e, lab, s, si in zip(res["example"], res["labels"], res["sisdr"], res["sisdri"]):
            name = class_names[int(lab)] if int(lab) < len(class_names) else str(lab)
            w.writerow([int(e), int(lab), name, f"{s:.4f}", f"{si:.4f}"])
    print(format_table({"test": summary}, title=title))
    if len(classes) <= max_class_rows:
        print(format_table(classes, columns=CLASS_COLUMNS, title="per class"))
    print(f"results: {out_dir / RESULTS_JSON}, {out_dir / ITEMS_CSV}")
    return out
