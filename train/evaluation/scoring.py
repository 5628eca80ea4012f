"""Scoring a model: per-source SI-SDR and SI-SDRi over fixed mixtures, after PIT.

The one evaluation of the package: validation during training, the final test and
``python -m train.evaluate`` all call ``evaluate``; ``train.evaluation.tables`` turns
its arrays into the paper's tables.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

import ugr_kernels as uk


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
