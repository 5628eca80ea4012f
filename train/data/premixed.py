"""Pre-mixed data sets: LibriMix-format manifests and the wsj0-mix folder layout.

Two ways to name the files, one reader:

* A manifest (``--train-manifest``, ``--val-manifest``, ``--test-manifest``) in
  LibriMix's metadata format: a CSV with a header holding ``mixture_path`` and
  ``source_1_path ... source_S_path`` (``mixture_ID`` names the item when present;
  ``length`` and any other column are ignored). Paths are absolute or relative to the
  CSV's folder. An optional ``noise_path`` column (WHAM!-style) is left out, or kept as
  the last source (class ``noise``) with ``keep_noise``.
* ``--wsj0-mix-dir DIR``: the wsj0-2mix/3mix layout, ``DIR/tr``, ``DIR/cv``, ``DIR/tt``
  (train, val, test), each with ``mix/`` and ``s1/ ... sS/`` holding files of the same
  names (and, WHAM!-style, ``noise/``, kept with ``keep_noise``).

Every file's header is checked before training: a missing file, a sample rate other
than 8 kHz, a source whose length differs from its mixture's, or a row with a wrong
number of sources stops with one line naming the file and the row.

The mixture is as given: no relative-level randomisation, no remixing. Mixture and
sources are only scaled together, by one factor (the mixture's std), as the online
mixtures are. Training draws, for index ``i``, a random item and a random crop of
``segment_len`` samples from ``rng = default_rng([seed, i])`` (a crop of an item
shorter than the segment is the item zero-padded at its end), so each epoch sees new
crops and a run resumes exactly. Validation and test items are whole mixtures, the
first ``num_items`` rows of their manifest (or files of their folder, sorted by
name); evaluation batches hold consecutive items of equal length.

Labels: every source is class ``source`` (id 0), a kept noise is ``noise`` (id 1).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from .audio import SAMPLE_RATE, AudioFileError, audio_info
from .mixing import collate

__all__ = ["PremixedSplit", "PremixedDataset", "read_manifest", "wsj0_mix_split",
           "premixed_splits", "WSJ0_SPLITS"]

WSJ0_SPLITS = {"train": "tr", "val": "cv", "test": "tt"}
_UNBOUNDED = 2**62


class ManifestError(ValueError):
    """A manifest or a pre-mixed folder is malformed; the message names file and row."""


@dataclass(frozen=True)
class PremixedItem:
    name: str
    mixture: Path
    sources: tuple[Path, ...]
    where: str          # "train.csv row 3" / "DIR/tt/mix/x.wav": for error messages
    frames: int = 0


@dataclass(frozen=True)
class PremixedSplit:
    """The items of one split, checked, with their source names (``s1..sS`` [+ noise])."""

    origin: str
    items: tuple[PremixedItem, ...]
    num_sources: int
    has_noise: bool

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("source", "noise") if self.has_noise else ("source",)

    @property
    def labels(self) -> np.ndarray:
        labels = np.zeros(self.num_sources, dtype=np.int64)
        if self.has_noise:
            labels[-1] = 1
        return labels


def read_manifest(path, keep_noise: bool = False, check: bool = True) -> PremixedSplit:
    """The items of a LibriMix-format metadata CSV (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: not a readable CSV ({exc})") from None
    if not rows:
        raise ManifestError(f"{path}: empty manifest (no header)")
    header = [h.strip() for h in rows[0]]
    column = {name: i for i, name in enumerate(header)}
    if "mixture_path" not in column:
        raise ManifestError(f"{path}: no 'mixture_path' column (columns: {', '.join(header)}); "
                            f"expected LibriMix's mixture_ID, mixture_path, source_1_path ... "
                            f"source_S_path, length")
    S = 0
    while f"source_{S + 1}_path" in column:
        S += 1
    if S == 0:
        raise ManifestError(f"{path}: no 'source_1_path' column (columns: {', '.join(header)})")
    extra = sorted(h for h in header if h.startswith("source_") and h.endswith("_path")
                   and h not in {f"source_{k}_path" for k in range(1, S + 1)})
    if extra:
        raise ManifestError(f"{path}: source columns are not numbered 1..S without gaps: "
                            f"{extra[0]} after source_{S}_path")
    if keep_noise and "noise_path" not in column:
        raise ManifestError(f"{path}: --keep-noise, but the manifest has no 'noise_path' column")
    wanted = ["mixture_path"] + [f"source_{k}_path" for k in range(1, S + 1)] + \
        (["noise_path"] if keep_noise else [])
    folder = path.parent
    items = []
    for number, row in enumerate(rows[1:], start=1):
        if not any(cell.strip() for cell in row):
            continue                                   # a blank line
        where = f"{path} row {number}"
        cells = {}
        for name in wanted:
            i = column[name]
            cells[name] = row[i].strip() if i < len(row) else ""
        missing = [n for n in wanted[1:] if not cells[n]]
        if not cells["mixture_path"]:
            raise ManifestError(f"{where}: empty mixture_path")
        if missing:
            have = sum(1 for n in wanted[1:] if cells[n])
            raise ManifestError(f"{where}: {have} source path(s), the manifest's header has "
                                f"{len(wanted) - 1} ({missing[0]} is empty)")
        if len(row) > len(header):
            raise ManifestError(f"{where}: {len(row)} cells, the header has {len(header)} "
                                f"columns (a source too many?)")
        name = row[column["mixture_ID"]].strip() if "mixture_ID" in column and \
            column["mixture_ID"] < len(row) else ""
        resolve = lambda p: Path(p) if Path(p).is_absolute() else folder / p  # noqa: E731
        items.append(PremixedItem(name or Path(cells["mixture_path"]).stem,
                                  resolve(cells["mixture_path"]),
                                  tuple(resolve(cells[n]) for n in wanted[1:]), where))
    split = PremixedSplit(str(path), tuple(items), S + int(keep_noise), keep_noise)
    return _checked(split) if check else split


def wsj0_mix_split(root, split: str, keep_noise: bool = False, check: bool = True
                   ) -> PremixedSplit:
    """The items of one split (``train``/``val``/``test``) of a wsj0-mix folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--wsj0-mix-dir not found: {root}")
    base = root / WSJ0_SPLITS[split]
    if not (base / "mix").is_dir():
        raise ManifestError(f"{base / 'mix'}: missing (a wsj0-mix folder has "
                            f"tr/ cv/ tt/, each with mix/ s1/ ... sS/)")
    S = 0
    while (base / f"s{S + 1}").is_dir():
        S += 1
    if S == 0:
        raise ManifestError(f"{base / 's1'}: missing (each split has mix/ s1/ ... sS/)")
    folders = [f"s{k}" for k in range(1, S + 1)]
    if keep_noise:
        if not (base / "noise").is_dir():
            raise ManifestError(f"{base / 'noise'}: --keep-noise, but there is no noise/ folder")
        folders.append("noise")
    names = sorted(p.name for p in (base / "mix").iterdir() if p.is_file())
    if not names:
        raise ManifestError(f"{base / 'mix'}: no audio files")
    items = tuple(PremixedItem(Path(n).stem, base / "mix" / n,
                               tuple(base / d / n for d in folders), str(base / "mix" / n))
                  for n in names)
    out = PremixedSplit(str(base), items, len(folders), keep_noise)
    return _checked(out) if check else out


def _checked(split: PremixedSplit) -> PremixedSplit:
    """Every file's header read: present, 8 kHz, non-empty, sources as long as the mixture."""
    items = []
    for item in split.items:
        frames = _frames(item.mixture, item.where)
        for path in item.sources:
            n = _frames(path, item.where)
            if n != frames:
                raise ManifestError(f"{item.where}: {path} has {n} samples, its mixture "
                                    f"{item.mixture.name} has {frames}")
        items.append(PremixedItem(item.name, item.mixture, item.sources, item.where, frames))
    if not items:
        raise ManifestError(f"{split.origin}: no items")
    return PremixedSplit(split.origin, tuple(items), split.num_sources, split.has_noise)


def _frames(path: Path, where: str) -> int:
    try:
        return int(audio_info(path, SAMPLE_RATE).frames)
    except AudioFileError as exc:
        if where == str(path):
            raise
        raise ManifestError(f"{where}: {exc}") from None


def premixed_splits(manifests: Optional[dict] = None, wsj0_mix_dir=None,
                    keep_noise: bool = False, splits: Sequence[str] = ("train", "val", "test")
                    ) -> dict[str, PremixedSplit]:
    """The checked splits of a run's pre-mixed data; all have the same number of sources."""
    if wsj0_mix_dir is not None:
        out = {s: wsj0_mix_split(wsj0_mix_dir, s, keep_noise) for s in splits}
    else:
        manifests = manifests or {}
        absent = [s for s in splits if not manifests.get(s)]
        if absent:
            raise ManifestError(f"pre-mixed data needs --{absent[0]}-manifest too")
        out = {s: read_manifest(manifests[s], keep_noise) for s in splits}
    first = next(iter(out.values()))
    for split in out.values():
        if split.num_sources != first.num_sources:
            raise ManifestError(f"{split.origin}: {split.num_sources} sources, but "
                                f"{first.origin} has {first.num_sources}")
    return out


class PremixedDataset(Dataset):
    """Items of a :class:`PremixedSplit` as the trainer's batches (module docstring).

    ``train=True``: unbounded, random crops of ``segment_len`` (index -> item and crop);
    else the first ``num_items`` items, whole. ``dataset[i]`` has the keys of
    ``MixtureDataset``'s examples: ``mixture (T,)``, ``sources (S, T)``, ``labels (S,)``,
    ``level_db`` (0: not randomised), ``source_ids (S,)`` (the item's row), ``index``.
    """

    task = "premixed"

    def __init__(self, split: PremixedSplit, segment_len: int, seed: int = 0,
                 num_items: Optional[int] = None, *, train: bool = False):
        self.split = split
        self.items = split.items
        self.segment_len = int(segment_len)
        self.seed = int(seed)
        self.train = bool(train)
        self.num_items = None if train else min(len(self.items), num_items or len(self.items))
        self.num_sources = split.num_sources
        self.class_names = split.class_names
        self.labels = split.labels
        self.banks: dict = {}

    def __len__(self) -> int:
        return _UNBOUNDED if self.num_items is None else self.num_items

    def __repr__(self) -> str:
        return (f"PremixedDataset({self.split.origin!r}, items={len(self.items)}, "
                f"sources={self.num_sources}, train={self.train})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def frames(self, index: int) -> int:
        """Samples of example ``index`` (evaluation: the whole item)."""
        return self.segment_len if self.train else self.items[index].frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if index < 0 or index >= len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if self.train:
            rng = np.random.default_rng([self.seed, index])
            row = int(rng.integers(len(self.items)))
            item = self.items[row]
            T = self.segment_len
            at = int(rng.integers(item.frames - T + 1)) if item.frames > T else 0
            stop = min(item.frames, at + T)
        else:
            row, item = index, self.items[index]
            at, stop = 0, item.frames
        mix = _read(item.mixture, at, stop, item.where)
        sources = np.stack([_read(p, at, stop, item.where) for p in item.sources])
        if self.train and mix.size < self.segment_len:
            pad = self.segment_len - mix.size
            mix = np.pad(mix, (0, pad))
            sources = np.pad(sources, ((0, 0), (0, pad)))
        scale = float(mix.std())
        if scale > 1e-12:
            mix, sources = mix / scale, sources / scale
        S = self.num_sources
        return {"mixture": torch.from_numpy(mix.astype(np.float32)),
                "sources": torch.from_numpy(sources.astype(np.float32)),
                "labels": torch.from_numpy(self.labels.copy()),
                "level_db": torch.tensor(0.0),
                "source_ids": torch.full((S,), row, dtype=torch.int64),
                "index": torch.tensor(index, dtype=torch.int64)}

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return collate([self[i] for i in indices])


def _read(path: Path, start: int, stop: int, where: str) -> np.ndarray:
    try:
        x, _ = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as exc:
        raise ManifestError(f"{where}: {path}: cannot read ({exc})") from None
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if not np.isfinite(x).all():
        raise ManifestError(f"{where}: {path}: non-finite samples (NaN/inf)")
    return np.ascontiguousarray(x)
