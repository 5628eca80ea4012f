"""From a run's data options to datasets and batches: the one road data takes.

``build_data`` walks it in one direction, each step returning here:
``catalogs_for`` (which catalogues: the one place that decides) -> ``load_banks``
(read and validate the audio of one split) -> ``build_splits`` (the mixture
datasets) -> ``check_labels``. ``evaluation_set`` takes the same road to fixed,
seeded mixtures of any split for ``python -m train.evaluate``. Pre-mixed data
(``--train/val/test-manifest``, ``--wsj0-mix-dir``; ``train.data.premixed``) takes the
same road: ``catalogs_for`` returns its checked splits, and ``build_splits`` /
``evaluation_set`` make ``PremixedDataset``s of them instead of mixing.

Training batches come from a ``DataLoader`` over the step sampler: worker
processes mix ahead (prefetch), batches land in pinned memory on a GPU run so
the copy to the device is asynchronous. ``loader_rate`` times the mixing alone,
so the run header can say whether the loader or the step bounds a run.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .catalogs import SPLITS, SourceCatalog, csv_catalog, esc50_catalog, speech_catalog
from .mixing import (
    DEFAULT_EVAL_SEED,
    TASKS,
    DataSplits,
    MixtureDataset,
    StepBatchSampler,
    bank_keys,
    collate,
)
from .premixed import PremixedDataset, PremixedSplit, premixed_splits
from .sources import SourceBank, load_sources
from .synthetic import synthetic_catalog

EVAL_SPLITS = SPLITS + ("all",)


def catalogs_for(task: str, data_dir=None, data_csv=None, *, manifests=None,
                 wsj0_mix_dir=None, keep_noise: bool = False,
                 splits=SPLITS) -> tuple[dict, str]:
    """The source catalogues ``task`` mixes from, and a short name of the data.

    ``data_csv``: one catalogue from a ``filename,label[,split]`` CSV (the env one, or
    the speech one for ``task="speech"``); ``data_dir``: the ``shared/data`` layout
    (ESC-50 and/or speech, as the task needs); neither: the embedded synthetic data.
    Pre-mixed data instead (``manifests``, a ``{split: CSV}`` mapping, or
    ``wsj0_mix_dir``): ``{split: PremixedSplit}`` of ``splits``, every file checked.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if wsj0_mix_dir is not None or any((manifests or {}).values()):
        if data_dir is not None or data_csv is not None:
            raise ValueError("pre-mixed data (--*-manifest, --wsj0-mix-dir) replaces "
                             "--data-dir/--data-csv: give one or the other")
        if wsj0_mix_dir is not None and any((manifests or {}).values()):
            raise ValueError("give either --wsj0-mix-dir or manifests, not both")
        out = premixed_splits(manifests, wsj0_mix_dir, keep_noise, splits)
        name = Path(wsj0_mix_dir).name if wsj0_mix_dir is not None else \
            Path(next(iter(out.values())).origin).stem
        return out, name
    if data_csv is not None:
        if task == "mixed":
            raise ValueError("--data-csv provides one catalogue; --task mixed needs --data-dir")
        return {"speech" if task == "speech" else "env": csv_catalog(data_csv)}, Path(data_csv).stem
    if data_dir is None:
        return synthetic_catalog(), "synthetic"
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    builders = {"env": esc50_catalog, "speech": speech_catalog}
    return {key: builders[key](data_dir) for key in bank_keys(task)}, data_dir.name


def load_banks(task: str, catalogs: Mapping[str, SourceCatalog], split: str,
               progress: bool) -> dict[str, SourceBank]:
    """The audio of one split (``all``: every item) of each catalogue ``task`` needs."""
    missing = [k for k in bank_keys(task) if k not in catalogs]
    if missing:
        raise ValueError(f"task {task!r} needs catalogues {missing}")
    banks = {}
    for key in bank_keys(task):
        cat = catalogs[key]
        if split == "all":
            part = SourceCatalog([dataclasses.replace(it, split="test") for it in cat],
                                 name=cat.name, classes=cat.classes)
        else:
            part = cat.split(split)
        if len(part) == 0:
            raise ValueError(f"catalogue {cat.name!r} has no {split!r} items")
        banks[key] = load_sources(part, progress=progress, desc=f"loading {part.name}")
    return banks


def is_premixed(catalogs: Mapping) -> bool:
    return bool(catalogs) and all(isinstance(c, PremixedSplit) for c in catalogs.values())


def build_splits(task: str, catalogs: Mapping[str, SourceCatalog], segment_len: int,
                 seed: int = 0, *, num_val: int, num_test: int, num_train: Optional[int] = None,
                 progress: bool = True, **mix_kwargs) -> DataSplits:
    """Train/val/test mixtures of ``task``: every file of every split is read and checked
    here, before training starts. Train uses ``seed`` (fresh indices each step); val and
    test are fixed, seeded by ``DEFAULT_EVAL_SEED``, the same across runs. Pre-mixed
    ``catalogs``: random crops of the train items, the first ``num_val``/``num_test``
    whole items of val and test (``mix_kwargs`` do not apply: the mixture is as given)."""
    if is_premixed(catalogs):
        return DataSplits(
            train=PremixedDataset(catalogs["train"], segment_len, seed, train=True),
            val=PremixedDataset(catalogs["val"], segment_len, num_items=num_val),
            test=PremixedDataset(catalogs["test"], segment_len, num_items=num_test))
    banks = {split: load_banks(task, catalogs, split, progress) for split in SPLITS}
    seed_and_items = {"train": (seed, num_train), "val": (DEFAULT_EVAL_SEED, num_val),
             "test": (DEFAULT_EVAL_SEED, num_test)}
    return DataSplits(**{split: MixtureDataset(banks[split], task, segment_len,
                                               *seed_and_items[split],
                                               **mix_kwargs) for split in SPLITS})


def run_manifests(config) -> dict:
    """``{split: CSV}`` of a run's ``--train/val/test-manifest`` (unset ones left out)."""
    return {s: getattr(config, f"{s}_manifest") for s in SPLITS
            if getattr(config, f"{s}_manifest", None)}


def build_data(config, show: bool) -> DataSplits:
    """The datasets of a run. ``config`` is a ``RunConfig``; read here: ``task``,
    ``data_dir``, ``data_csv``, the manifests, ``wsj0_mix_dir``, ``keep_noise``,
    ``num_sources``, ``segment_len``, ``seed``, ``val_items``, ``test_items``.

    The number of sources comes from pre-mixed data (``--num-sources``, when given, must
    agree) or from ``--num-sources`` for online mixing (default 2)."""
    manifests = run_manifests(config)
    wsj0 = getattr(config, "wsj0_mix_dir", None)     # (older config-likes lack these)
    keep_noise = getattr(config, "keep_noise", False)
    num_sources = getattr(config, "num_sources", None)
    splits = SPLITS if not getattr(config, "no_test", False) or wsj0 else ("train", "val")
    catalogs, _ = catalogs_for(config.task, config.data_dir, config.data_csv,
                               manifests=manifests, wsj0_mix_dir=wsj0,
                               keep_noise=keep_noise, splits=splits)
    if is_premixed(catalogs):
        if "test" not in catalogs:   # --no-test: the test set is never read
            catalogs = {**catalogs, "test": catalogs["val"]}
        S = catalogs["train"].num_sources
        if num_sources is not None and num_sources != S:
            raise ValueError(f"--num-sources {num_sources}, but the pre-mixed data "
                             f"({catalogs['train'].origin}) has {S} sources")
        return build_splits(config.task, catalogs, config.segment_len, config.seed,
                            num_val=config.val_items, num_test=config.test_items)
    if keep_noise:
        raise ValueError("--keep-noise applies to pre-mixed data (--*-manifest, --wsj0-mix-dir)")
    if config.data_dir is None and config.data_csv is None and show:
        print("No --data-dir given: training on the embedded synthetic sources. "
              "Select real audio with --data-dir (e.g. --data-dir ../shared/data).")
    data = build_splits(config.task, catalogs, config.segment_len, config.seed,
                        num_val=config.val_items, num_test=config.test_items, progress=show,
                        num_sources=num_sources or 2)
    check_labels(data)
    return data


def evaluation_set(task: str, catalogs: Mapping[str, SourceCatalog], split: str,
                   segment_len: int, items: int, progress: bool,
                   num_sources: int = 2) -> MixtureDataset:
    """Fixed, seeded mixtures of one split (for ``split="test"`` the trainer's own test set);
    of pre-mixed ``catalogs``, the first ``items`` whole items of ``split``."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    if is_premixed(catalogs):
        if split not in catalogs:
            raise ValueError(f"no {split!r} split in this pre-mixed data "
                             f"(it has {', '.join(catalogs)})")
        return PremixedDataset(catalogs[split], segment_len, num_items=items)
    banks = load_banks(task, catalogs, split, progress)
    return MixtureDataset(banks, task, segment_len, DEFAULT_EVAL_SEED, items,
                          num_sources=num_sources)


def check_labels(data: DataSplits) -> None:
    """Every label a split can produce is a class index: checked once, here, so the
    training step can index the class table without reading labels on the host."""
    n = len(data.class_names)
    for name in SPLITS:
        ds = getattr(data, name)
        if not isinstance(ds, MixtureDataset):
            continue                    # pre-mixed: labels are fixed per slot
        ids = [np.asarray(bank.label_ids) for key, bank in ds.banks.items()
               if ds.task == "env" and key == "env"]
        fixed = {"speech": [0], "mixed": [0, 1]}.get(ds.task, [])
        labels = np.concatenate(ids + [np.asarray(fixed, dtype=np.int64)])
        if labels.size and (labels.min() < 0 or labels.max() >= n):
            raise ValueError(f"{name} data has labels outside its {n} classes "
                             f"({int(labels.min())}..{int(labels.max())})")


def eval_batches(dataset: MixtureDataset, batch_size: int):
    """The fixed mixtures of ``dataset`` in order, ``batch_size`` at a time (pre-mixed
    items of different lengths: a batch holds consecutive items of equal length)."""
    n = len(dataset)
    frames = getattr(dataset, "frames", None)
    if frames is None:
        for start in range(0, n, batch_size):
            yield dataset.batch(range(start, min(n, start + batch_size)))
        return
    group: list[int] = []
    for i in range(n):
        if group and (len(group) == batch_size or frames(i) != frames(group[0])):
            yield dataset.batch(group)
            group = []
        group.append(i)
    if group:
        yield dataset.batch(group)


def train_loader(data: DataSplits, config, start_step: int, rank: int, world_size: int,
                 pin: bool) -> DataLoader:
    """Batches of fresh mixtures from ``start_step`` on. ``config`` is a ``RunConfig``;
    read here: ``batch_size``, ``steps``, ``num_workers`` (resolved)."""
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
