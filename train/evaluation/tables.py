"""The paper's tables: mean, std and percentiles of per-source SI-SDRi, overall and per class.

``write_test_results`` is the one way a test evaluation is summarised, printed and
stored (through the run folder), shared by the end of training and by
``python -m train.evaluate``, so both produce the same files in the same format.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..run_folder import RunFolder

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
COLUMNS = ("mean", "std") + tuple(f"p{p}" for p in PERCENTILES)
CLASS_COLUMNS = ("count", "mean", "std", "p5", "p50", "p95")
MAX_CLASS_ROWS = 10   # more classes than this: the per-class table stays in results.json


def summarize(values: np.ndarray) -> dict[str, float]:
    """mean, std and the percentiles 1..99 of ``values`` (the paper's table row)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {c: float("nan") for c in COLUMNS}
    row = {"mean": float(values.mean()), "std": float(values.std())}
    row.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))})
    return row


def per_class(values: np.ndarray, labels: np.ndarray,
              class_names: Optional[Sequence[str]]) -> dict[str, dict[str, float]]:
    """``summarize`` per class of the reference source (only classes present)."""
    out = {}
    for k in np.unique(labels):
        name = class_names[int(k)] if class_names is not None and int(k) < len(class_names) \
            else str(int(k))
        out[name] = summarize(values[labels == k]) | {"count": int((labels == k).sum())}
    return out


def format_table(rows: dict[str, dict[str, float]], columns: Sequence[str] = COLUMNS,
                 title: str = "") -> str:
    """A fixed-width text table, one row per entry of ``rows`` (values in dB)."""
    name_width = max([len(str(k)) for k in rows] + [len(title), 4])
    header = f"{title:<{name_width}} " + " ".join(f"{c:>7}" for c in columns)
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        cells = []
        for c in columns:
            v = row.get(c, float("nan"))
            cells.append(f"{v:>7d}" if isinstance(v, int) else f"{v:>7.2f}")
        lines.append(f"{str(name):<{name_width}} " + " ".join(cells))
    return "\n".join(lines)


def write_test_results(folder: RunFolder, res: dict[str, np.ndarray],
                       class_names: Sequence[str], *, info: Optional[dict] = None,
                       title: str = "test SI-SDRi (dB)") -> dict:
    """Summarise per-source test results, print the tables and store them in ``folder``.

    Args:
        folder: where ``results.json`` and ``test_sisdri.csv`` go (created if needed).
        res: the output of ``train.evaluation.scoring.evaluate``: arrays ``sisdri``,
            ``sisdr``, ``labels``, ``example`` over the valid (example, source) pairs.
        class_names: names of the label ids.
        info: extra top-level entries of ``results.json`` (step, wall time, checkpoint...).

    Returns:
        The ``results.json`` content: ``info``, ``test`` (the summary row), ``per_class``
        (a row per class of the reference, plus ``count``) and ``items``. The per-class
        table is printed for at most ``MAX_CLASS_ROWS`` classes (50 ESC-50 rows would
        bury the summary; they are in the JSON).
    """
    summary = summarize(res["sisdri"])
    classes = per_class(res["sisdri"], res["labels"], class_names)
    out = {**(info or {}), "test": summary, "per_class": classes,
           "items": int(np.asarray(res["sisdri"]).size)}
    folder.write_results(out, res, class_names)
    print(format_table({"test": summary}, title=title))
    if len(classes) <= MAX_CLASS_ROWS:
        print(format_table(classes, columns=CLASS_COLUMNS, title="per class"))
    print(f"results: {folder.results_json}, {folder.items_csv}")
    return out
