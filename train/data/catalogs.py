"""Source catalogues: what audio exists, its class, group and split.

A *catalogue* is a list of :class:`SourceItem` rows: a file (or in-memory
array), its class label, a group id (speaker, or the recording a clip was cut
from) and its split (``train``/``val``/``test``). It holds no audio;
:func:`train.data.sources.load_sources` reads it.

Catalogue builders:

* :func:`esc50_catalog` -- ESC-50 (``esc50/meta.csv``): folds 1-4 train, fold 5
  split per class into val and test (paper's split).
* :func:`speech_catalog` -- the speech folder (``speech/meta.csv``): split by
  speaker as given in its ``split`` column.
* :func:`csv_catalog` -- any folder of audio described by a CSV
  ``filename,label[,split][,group|speaker]`` (WSJ0, LibriSpeech, own sounds).
* :func:`train.data.synthetic.synthetic_catalog` -- procedural default data.

Which catalogues a run reads is decided in one place: :func:`train.data.loader.catalogs_for`.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

__all__ = [
    "SPLITS",
    "SourceItem",
    "SourceCatalog",
    "esc50_catalog",
    "speech_catalog",
    "csv_catalog",
    "hash_split",
]

PathLike = Union[str, os.PathLike]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SourceItem:
    """One source recording.

    Attributes:
        key: unique id within its catalogue (e.g. the relative file name).
        label: class name (ESC-50 category, ``"speech"``, a user label...).
        group: items that must be treated as "the same source" share it: the
            speaker for speech, the original recording for ESC-50 clips. Mixing
            uses it to pick two different speakers and to join clips of one
            speaker; splits never share a group where the builder says so.
        split: one of :data:`SPLITS`.
        path: audio file, or None when ``audio`` holds the samples.
        audio: in-memory samples, shape ``(T,)``, float32 or int16 (int16 is
            read as x / 32768); None for file-backed items.
        meta: extra columns (fold, corpus, word, ...), informative only.
    """

    key: str
    label: str
    group: str
    split: str
    path: str | None = None
    audio: np.ndarray | None = field(default=None, repr=False, compare=False)
    meta: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"{self.key}: split must be one of {SPLITS}, got {self.split!r}")
        if (self.path is None) == (self.audio is None):
            raise ValueError(f"{self.key}: give exactly one of path or audio")


class SourceCatalog(Sequence[SourceItem]):
    """An ordered list of :class:`SourceItem` plus the class vocabulary.

    ``classes`` is fixed when the catalogue is built and kept by every subset
    (``split()``, ``filter()``, ``take()``), so class ids mean the same thing in
    train, val and test even when a split lacks some class.
    """

    def __init__(self, items: Iterable[SourceItem], name: str = "",
                 classes: Sequence[str] | None = None):
        self.items: list[SourceItem] = list(items)
        self.name = name
        if classes is None:
            classes = sorted({it.label for it in self.items})
        self.classes: tuple[str, ...] = tuple(classes)
        missing = {it.label for it in self.items} - set(self.classes)
        if missing:
            raise ValueError(f"catalogue {name!r}: labels {sorted(missing)} not in classes")
        keys = [it.key for it in self.items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"catalogue {name!r}: duplicate item keys")

    # Sequence protocol
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._derive(self.items[i])
        return self.items[i]

    def __iter__(self) -> Iterator[SourceItem]:
        return iter(self.items)

    def __repr__(self) -> str:
        counts = {s: sum(it.split == s for it in self.items) for s in SPLITS}
        counts = {s: n for s, n in counts.items() if n}
        return (f"SourceCatalog({self.name!r}, {len(self)} items, {len(self.classes)} classes, "
                f"{len(self.groups)} groups, splits={counts})")

    def _derive(self, items: Iterable[SourceItem], suffix: str = "") -> "SourceCatalog":
        return SourceCatalog(items, name=self.name + suffix, classes=self.classes)

    @property
    def labels(self) -> list[str]:
        return [it.label for it in self.items]

    @property
    def groups(self) -> list[str]:
        """Distinct group ids, in first-seen order."""
        return list(dict.fromkeys(it.group for it in self.items))

    def split(self, name: str) -> "SourceCatalog":
        """Items of one split (``train``/``val``/``test``)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self._derive((it for it in self.items if it.split == name), f"/{name}")

    def splits(self) -> dict[str, "SourceCatalog"]:
        return {s: self.split(s) for s in SPLITS}

    def filter(self, pred: Callable[[SourceItem], bool]) -> "SourceCatalog":
        return self._derive(it for it in self.items if pred(it))

    def take(self, n: int) -> "SourceCatalog":
        """The first ``n`` items."""
        return self._derive(self.items[:n])

    def sample(self, n: int, seed: int = 0) -> "SourceCatalog":
        """``n`` items drawn without replacement, deterministic in ``seed``,
        kept in catalogue order."""
        n = min(n, len(self))
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self._derive(self.items[i] for i in idx)

    def counts(self, by: str = "split") -> dict[str, int]:
        """Number of items per value of ``by`` (``split``, ``label`` or ``group``)."""
        out: dict[str, int] = {}
        for it in self.items:
            k = getattr(it, by)
            out[k] = out.get(k, 0) + 1
        return out


def hash_split(key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Deterministic split for ``key`` from its MD5 (stable across runs and
    machines, unlike Python's salted ``hash``). ``fractions`` = train/val/test."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    u = int.from_bytes(hashlib.md5(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"catalogue CSV not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; has {cols}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _find_meta(data_dir: PathLike, sub: str) -> Path:
    """``data_dir/sub/meta.csv``, or ``data_dir/meta.csv`` if data_dir is the
    sub-folder itself."""
    d = Path(data_dir)
    for cand in (d / sub / "meta.csv", d / "meta.csv"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no {sub}/meta.csv under {d}")


def esc50_catalog(data_dir: PathLike, eval_fold: int = 5) -> SourceCatalog:
    """ESC-50 catalogue with the paper's split.

    Args:
        data_dir: folder containing ``esc50/meta.csv`` (or the esc50 folder).
        eval_fold: the fold split into val and test; the other four are train.

    Split of ``eval_fold``: per class, the clips sorted by file name, the first
    half is ``val`` and the second half ``test`` (4 + 4 clips a class for the
    standard 8 clips per class and fold, i.e. 200 val, 200 test, 1600 train).
    Note that takes of one Freesound recording can land in both val and test;
    this split follows the paper and keeps every class in both.

    Labels are ESC-50 categories; ``classes`` is ordered by ESC-50 ``target``
    so the class id equals the ESC-50 target. Group = the Freesound source id
    (``<fold>-<srcid>-<take>-<target>``), so clips of one recording share it.
    """
    meta = _find_meta(data_dir, "esc50")
    rows = _read_csv(meta, ["filename", "fold", "target", "category"])
    root = meta.parent

    by_target: dict[int, str] = {}
    for r in rows:
        t, c = int(r["target"]), r["category"]
        if by_target.setdefault(t, c) != c:
            raise ValueError(f"{meta}: target {t} has two categories ({by_target[t]}, {c})")
    classes = [by_target[t] for t in sorted(by_target)]

    eval_rows: dict[str, list[str]] = {}
    for r in rows:
        if int(r["fold"]) == eval_fold:
            eval_rows.setdefault(r["category"], []).append(r["filename"])
    eval_split: dict[str, str] = {}
    for names in eval_rows.values():
        names = sorted(names)
        half = (len(names) + 1) // 2  # odd counts: the extra clip goes to val
        for j, fn in enumerate(names):
            eval_split[fn] = "val" if j < half else "test"

    items = []
    for r in rows:
        fn = r["filename"]
        parts = Path(fn).stem.split("-")
        group = parts[1] if len(parts) >= 4 else Path(fn).stem
        items.append(SourceItem(
            key=fn, label=r["category"], group=group,
            split=eval_split.get(fn, "train"), path=str(root / fn),
            meta={"fold": r["fold"], "target": r["target"], "esc10": r.get("esc10", "")},
        ))
    return SourceCatalog(items, name="esc50", classes=classes)


def speech_catalog(data_dir: PathLike, corpora: Sequence[str] | None = None) -> SourceCatalog:
    """Speech catalogue from ``speech/meta.csv`` (columns ``filename, corpus,
    speaker, word, duration_s, split``).

    Label is ``"speech"`` for every item (the class used by the ``mixed`` task
    and class biasing); group is ``"<corpus>/<speaker>"``; the split is the
    ``split`` column, which is by speaker. ``corpora`` keeps only those corpora
    (e.g. ``["fsdd"]``).
    """
    meta = _find_meta(data_dir, "speech")
    rows = _read_csv(meta, ["filename", "speaker", "split"])
    root = meta.parent
    items = []
    for r in rows:
        corpus = r.get("corpus", "") or "speech"
        if corpora is not None and corpus not in corpora:
            continue
        items.append(SourceItem(
            key=r["filename"], label="speech", group=f"{corpus}/{r['speaker']}",
            split=r["split"], path=str(root / r["filename"]),
            meta={k: r.get(k, "") for k in ("corpus", "speaker", "word", "duration_s")},
        ))
    return SourceCatalog(items, name="speech", classes=["speech"])


def csv_catalog(
    csv_path: PathLike,
    root: PathLike | None = None,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    name: str | None = None,
) -> SourceCatalog:
    """Catalogue of any audio folder described by a CSV.

    Columns: ``filename`` (relative to ``root``, or absolute), ``label``, and
    optionally ``split`` (train/val/test) and ``group`` (or ``speaker``).

    * group: the ``group`` column, else ``speaker``, else the file name (each
      file its own group). For speech data give a speaker column: the speech
      task mixes two different groups and joins clips of one group.
    * split: the ``split`` column when present; otherwise
      :func:`hash_split` of the group (so a speaker never spans two splits)
      with ``fractions`` train/val/test. Few groups can leave a split empty;
      give a split column then.

    Args:
        csv_path: the CSV file.
        root: folder the file names are relative to; default the CSV's folder.
    """
    csv_path = Path(csv_path)
    rows = _read_csv(csv_path, ["filename", "label"])
    root = Path(root) if root is not None else csv_path.parent
    items = []
    for r in rows:
        fn = r["filename"]
        group = r.get("group") or r.get("speaker") or fn
        split = r.get("split") or hash_split(group, fractions)
        p = Path(fn)
        items.append(SourceItem(
            key=fn, label=r["label"], group=group, split=split,
            path=str(p if p.is_absolute() else root / p),
            meta={k: v for k, v in r.items() if k not in ("filename", "label", "split", "group")},
        ))
    return SourceCatalog(items, name=name or csv_path.stem)
