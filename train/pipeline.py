"""The input side of a run: datasets from the configuration, label checks, the loader.

Training batches come from a ``DataLoader`` over the step sampler: worker
processes mix ahead (prefetch), batches land in pinned memory on a GPU run so
the copy to the device is asynchronous. ``loader_rate`` times the mixing alone,
so the run header can say whether the loader or the step bounds a run.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import RunConfig
from .mixing import DataSplits, StepBatchSampler, build_datasets, collate, datasets_from_catalogs


def build_data(config: RunConfig, show: bool) -> DataSplits:
    kw = dict(num_val=config.val_items, num_test=config.test_items, progress=show)
    if config.data_csv:
        from .datasets import csv_catalog

        if config.task == "mixed":
            raise ValueError("--data-csv provides one catalogue; --task mixed needs --data-dir")
        key = "speech" if config.task == "speech" else "env"
        data = datasets_from_catalogs(config.task, {key: csv_catalog(config.data_csv)},
                                      config.segment_len, config.seed, **kw)
    else:
        if config.data_dir is None and show:
            print("No --data-dir given: training on the embedded synthetic sources. "
                  "Select real audio with --data-dir (e.g. --data-dir ../shared/data).")
        data = build_datasets(config.data_dir, config.task, config.segment_len, config.seed, **kw)
    check_labels(data)
    return data


def check_labels(data: DataSplits) -> None:
    """Every label a split can produce is a class index: checked once, here, so the
    training step can index the class table without reading labels on the host."""
    n = len(data.class_names)
    for name in ("train", "val", "test"):
        ds = getattr(data, name)
        ids = [np.asarray(bank.label_ids) for key, bank in ds.banks.items()
               if ds.task == "env" and key == "env"]
        fixed = {"speech": [0], "mixed": [0, 1]}.get(ds.task, [])
        labels = np.concatenate(ids + [np.asarray(fixed, dtype=np.int64)])
        if labels.size and (labels.min() < 0 or labels.max() >= n):
            raise ValueError(f"{name} data has labels outside its {n} classes "
                             f"({int(labels.min())}..{int(labels.max())})")


def train_loader(data: DataSplits, config: RunConfig, start_step: int, rank: int,
                 world_size: int, pin: bool) -> DataLoader:
    sampler = StepBatchSampler(config.batch_size, start_step, max(0, config.steps - start_step),
                               rank=rank, world_size=world_size)
    workers = config.num_workers
    return DataLoader(data.train, batch_sampler=sampler, collate_fn=collate,
                      num_workers=workers, pin_memory=pin,
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def loader_rate(dataset, batch: int, seconds: float = 0.5, first: int = 10**9) -> float:
    """Mixtures per second one process makes (the loader alone, no model).

    Mixes batches of ``batch`` fresh indices (far from the run's own) for about
    ``seconds``; a loader with W workers makes about W times this.
    """
    made, t0 = 0, time.perf_counter()
    while True:
        dataset.batch(range(first + made, first + made + batch))
        made += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return made / elapsed


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mixture, sources, labels on ``device``; asynchronous from pinned memory."""
    return tuple(batch[k].to(device, non_blocking=True) for k in ("mixture", "sources", "labels"))
