"""A catalogue's audio, read and validated before training: :class:`SourceBank`.

:func:`load_sources` turns a catalogue (:mod:`train.data.catalogs`) into a
:class:`SourceBank`, checking every file before any training starts, so a bad file
fails the run at start-up with its name rather than hours later inside a worker.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .audio import (
    SAMPLE_RATE,
    AudioFileError,
    audio_info,
    int16_to_float32,
    read_audio,
)
from .catalogs import SourceCatalog, SourceItem

__all__ = ["SourceBank", "load_sources"]

class SourceBank:
    """The audio of a catalogue's items, indexed like the catalogue.

    In preload mode every array is in memory (int16 when the file is 16-bit
    PCM, halving memory; float32 otherwise); in lazy mode files are read on
    each access (their headers were validated at construction).

    Attributes:
        items: the :class:`SourceItem` list.
        classes: class vocabulary (from the catalogue).
        label_ids: ``(N,)`` int64, index of each item's label in ``classes``.
        group_ids: ``(N,)`` int64, index of each item's group in ``group_names``.
        group_names: distinct groups.
        group_members: list over groups of ``(n_g,)`` int64 item indices.
        lengths: ``(N,)`` int64 samples per item.
    """

    def __init__(self, items: Sequence[SourceItem], classes: Sequence[str],
                 arrays: list[np.ndarray] | None, lengths: Sequence[int],
                 rms: Sequence[float] | None, sample_rate: int | None, name: str = ""):
        self.items = list(items)
        self.classes = tuple(classes)
        self.name = name
        self.sample_rate = sample_rate
        self._arrays = arrays
        self._rms = None if rms is None else np.asarray(rms, dtype=np.float64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        cls_index = {c: i for i, c in enumerate(self.classes)}
        self.label_ids = np.array([cls_index[it.label] for it in self.items], dtype=np.int64)
        self.group_names: list[str] = list(dict.fromkeys(it.group for it in self.items))
        g_index = {g: i for i, g in enumerate(self.group_names)}
        self.group_ids = np.array([g_index[it.group] for it in self.items], dtype=np.int64)
        order = np.argsort(self.group_ids, kind="stable")
        bounds = np.searchsorted(self.group_ids[order], np.arange(len(self.group_names) + 1))
        self.group_members = [order[bounds[g]:bounds[g + 1]] for g in range(len(self.group_names))]

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        mode = "preloaded" if self.preloaded else "lazy"
        return (f"SourceBank({self.name!r}, {len(self)} items, {len(self.classes)} classes, "
                f"{len(self.group_names)} groups, {self.total_seconds / 60:.1f} min, {mode})")

    @property
    def preloaded(self) -> bool:
        return self._arrays is not None

    @property
    def total_seconds(self) -> float:
        return float(self.lengths.sum()) / (self.sample_rate or SAMPLE_RATE)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays) if self._arrays is not None else 0

    def raw(self, i: int) -> np.ndarray:
        """Stored samples of item ``i``: ``(T,)`` int16 or float32."""
        if self._arrays is not None:
            return self._arrays[i]
        it = self.items[i]
        if it.audio is not None:
            return it.audio
        return read_audio(it.path, self.sample_rate, dtype="auto")

    def audio(self, i: int) -> np.ndarray:
        """Samples of item ``i`` as float32 ``(T,)`` in [-1, 1)."""
        x = self.raw(i)
        return int16_to_float32(x) if x.dtype == np.int16 else x.astype(np.float32, copy=False)

    def rms(self, i: int) -> float:
        """RMS of the whole item (float scale), used as the reference level
        for deciding that a crop is silent."""
        if self._rms is not None:
            return float(self._rms[i])
        return _rms(self.audio(i))


def _rms(x: np.ndarray) -> float:
    x = x.astype(np.float64, copy=False)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def _validate_array(it: SourceItem) -> np.ndarray:
    x = it.audio
    where = f"<in-memory {it.key}>"
    if x.ndim != 1:
        raise AudioFileError(where, f"audio must be 1-D (T,), got shape {x.shape}")
    if x.size == 0:
        raise AudioFileError(where, "contains no samples (empty audio)")
    if x.dtype == np.int16:
        return x
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise AudioFileError(where, "contains non-finite samples (NaN/inf)")
    return x


def load_sources(
    items: SourceCatalog | Iterable[SourceItem],
    preload: bool = True,
    progress: bool = True,
    *,
    expected_sr: int | None = SAMPLE_RATE,
    dtype: str = "auto",
    desc: str | None = None,
) -> SourceBank:
    """Read (or check) every item's audio before training.

    Args:
        items: a catalogue (its ``classes`` are kept) or any item iterable.
        preload: read everything into memory now, fully decoding and checking
            each file (missing, corrupt, empty, non-finite, wrong rate). When
            False only headers are checked now and files are decoded on access,
            so a file whose data (not header) is corrupt fails later.
        progress: show a tqdm bar.
        expected_sr: required sample rate (see :func:`read_audio`).
        dtype: storage: ``"auto"`` (int16 for 16-bit PCM, else float32) or
            ``"float32"``.

    Returns:
        A :class:`SourceBank`.

    Raises:
        AudioFileError: naming the first bad file.
    """
    from tqdm.auto import tqdm

    if isinstance(items, SourceCatalog):
        classes, name, items = items.classes, items.name, items.items
    else:
        items = list(items)
        classes, name = sorted({it.label for it in items}), ""
    if not items:
        raise ValueError(f"no items to load{f' for {name!r}' if name else ''}")

    arrays: list[np.ndarray] | None = [] if preload else None
    lengths, rms = [], []
    bar = tqdm(items, desc=desc or f"loading {name or 'audio'}", unit="file",
               disable=not progress, leave=False)
    for it in bar:
        if it.audio is not None:
            x = _validate_array(it)
            lengths.append(x.size)
            rms.append(_rms(int16_to_float32(x) if x.dtype == np.int16 else x))
            if arrays is not None:
                arrays.append(x)
        elif preload:
            x = read_audio(it.path, expected_sr, dtype=dtype)
            lengths.append(x.size)
            rms.append(_rms(int16_to_float32(x) if x.dtype == np.int16 else x))
            arrays.append(x)
        else:
            lengths.append(int(audio_info(it.path, expected_sr).frames))
    return SourceBank(items, classes, arrays, lengths, rms if preload else None,
                      expected_sr, name=name)
