"""Evaluation: per-source SI-SDRi over a fixed set, and the paper's summary tables."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch

import ugr_kernels as uk

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
COLUMNS = ("mean", "std") + tuple(f"p{p}" for p in PERCENTILES)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[dict], device: torch.device,
             backend: str = "auto", progress=None) -> dict[str, np.ndarray]:
    """Run ``model`` over ``batches`` and collect per-source results.

    Each batch is a dict with ``mixture (B, T)``, ``sources (B, C, T)`` and ``labels (B, C)``.
    Returns arrays over all valid (example, source) pairs: ``sisdri``, ``sisdr``,
    ``labels`` (class index of the reference), ``example`` (running example index).
    """
    was_training = model.training
    model.eval()
    sisdri, sisdr, labels, example = [], [], [], []
    seen = 0
    for batch in batches:
        mix = batch["mixture"].to(device)
        ref = batch["sources"].to(device)
        est = model(mix).float()
        out = uk.weighted_sisdr(est, ref.float(), mixture=mix.float(), backend=backend)
        valid = out.mask.cpu()
        sisdri.append(out.sisdri.cpu()[valid])
        sisdr.append(out.sisdr.cpu()[valid])
        labels.append(batch["labels"][valid])
        idx = torch.arange(seen, seen + mix.shape[0]).unsqueeze(1).expand_as(valid)
        example.append(idx[valid])
        seen += mix.shape[0]
        if progress is not None:
            progress.update(mix.shape[0])
    model.train(was_training)
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0)  # noqa: E731
    return {"sisdri": cat(sisdri), "sisdr": cat(sisdr), "labels": cat(labels),
            "example": cat(example)}


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
