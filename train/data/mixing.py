"""Online mixing of S sources (two in the paper: 8 kHz, 4 s, [-5, 5] dB).

Tasks (:data:`TASKS`):

* ``env``: S environmental sources of S *different classes*. Labels are
  class ids in the env catalogue's ``classes`` (ESC-50: the ESC-50 target).
* ``speech``: S *different speakers*. A source shorter than the segment is
  the speaker's clips joined end to end (Speech Commands / FSDD clips are
  0.1-2.3 s). Every label is 0 (``"speech"``).
* ``mixed`` (S = 2 only): one speech source (slot 0, label 0 ``"speech"``) and one
  environmental source (slot 1, label 1 ``"env"``), so class biasing can be
  written ``{"speech": 3, "env": 0}`` against ``dataset.class_names``.

One example, a deterministic function of ``(seed, index)``:

1. ``rng = np.random.default_rng([seed, index])``; draw the relative level
   ``level_db ~ U[-5, 5]`` first (so it does not depend on crop retries).
2. For each slot draw a source item (respecting the task's "different class /
   speaker" rule) and a random crop of ``segment_len`` samples. A crop is
   *silent* when ``rms(crop) < max(silence_abs, silence_rel * rms(source))``
   with defaults ``1e-4`` (-80 dBFS, i.e. digital silence or dither) and
   ``0.1`` (-20 dB under the whole source's RMS, i.e. a crop that missed
   the event of an ESC-50 clip padded with zeros). Silent crops are redrawn:
   ``crop_tries`` offsets per item, then another item, up to ``max_tries``
   crops in all; if every try was silent the loudest crop seen is used.
3. Sources shorter than the segment: ``join`` (speech default: append other
   clips of the same group, in random order, until long enough, then crop),
   ``pad`` (env default: zero-pad at a random position, like ESC-50's own
   padding of short events) or ``loop`` (tile the clip, then crop).
4. Normalisation. Each crop is made zero mean and unit std; then slot 0 is
   scaled by ``10**(level_db/40)`` and slot 1 by ``10**(-level_db/40)``, so
   the source power ratio is exactly ``level_db`` dB. With S > 2 sources, step 1
   draws S levels ``g_k ~ U[low/2, high/2]`` dB instead (``level_db`` is then
   ``g_0 - g_1``) and slot k is scaled by ``10**(g_k/20)``; the mixture is their
   sum; finally mixture *and* sources are divided by the mixture's std. So
   the mixture has zero mean and unit std (as in the paper) and
   ``mixture == sources.sum(0)`` holds exactly in float32 (the mixture is
   computed as the float32 sum of the float32 sources; for S > 2 the sum is
   taken in slot order). The paper also
   normalises each target to unit std, which breaks that identity; SI-SDR is
   scale invariant, so targets at their mixing scale lose nothing and keep
   the mixture consistent for mixture-consistency projections and SI-SDRi.

Training passes fresh indices every step (``i = step * batch + j``, see
:class:`StepBatchSampler`), so it never repeats a mixture and resumes exactly;
validation/test datasets use indices ``0..n-1`` with a fixed seed, so they are
identical at every evaluation and across runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .audio import INT16_SCALE, SAMPLE_RATE
from .sources import SourceBank

__all__ = [
    "TASKS",
    "MixtureDataset",
    "DataSplits",
    "StepBatchSampler",
    "collate",
    "normalize_mixture",
    "bank_keys",
    "DEFAULT_EVAL_SEED",
    "MAX_SOURCES",
]

TASKS = ("env", "speech", "mixed")
DEFAULT_SEGMENT = 4 * SAMPLE_RATE
DEFAULT_EVAL_SEED = 20210101  # val/test mixtures do not depend on the training seed
_UNBOUNDED = 2**62


@dataclass(frozen=True)
class _Slot:
    bank: str          # "speech" or "env"
    distinct: str | None  # this slot must differ from the earlier slots in "label" or "group"
    short: str         # policy for sources shorter than the segment


MAX_SOURCES = 8


def _task_slots(task: str, short_env: str, short_speech: str,
                num_sources: int = 2) -> tuple[_Slot, ...]:
    if not 1 <= num_sources <= MAX_SOURCES:
        raise ValueError(f"num_sources must be between 1 and {MAX_SOURCES}, got {num_sources}")
    rest = num_sources - 1
    if task == "env":
        return (_Slot("env", None, short_env),) + (_Slot("env", "label", short_env),) * rest
    if task == "speech":
        return (_Slot("speech", None, short_speech),) + \
            (_Slot("speech", "group", short_speech),) * rest
    if task == "mixed":
        if num_sources != 2:
            raise ValueError(f"task 'mixed' is one speech and one environmental source "
                             f"(2 sources), got --num-sources {num_sources}")
        return _Slot("speech", None, short_speech), _Slot("env", None, short_env)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def bank_keys(task: str) -> list[str]:
    """The source banks a task mixes from (``"env"`` and/or ``"speech"``)."""
    return sorted({s.bank for s in _task_slots(task, "pad", "join")})


def normalize_mixture(crops: np.ndarray, level_db) -> tuple[np.ndarray, np.ndarray]:
    """Normalise S crops and mix them at relative levels.

    Args:
        crops: ``(S, T)`` raw source crops (any float dtype).
        level_db: for S = 2, the power of source 0 over source 1, in dB; for any S,
            a sequence of S per-source levels in dB (slot k scaled by ``10**(g_k/20)``).

    Returns:
        ``mixture (T,)`` float32 with zero mean and unit std, and
        ``sources (S, T)`` float32 with zero mean each, at the given levels, and
        ``mixture == sources[0] + ... + sources[S-1]`` exactly (float32 sum in slot
        order). A silent crop (std 0) stays all zeros.
    """
    s = np.asarray(crops, dtype=np.float64)
    s = s - s.mean(axis=1, keepdims=True)
    std = s.std(axis=1, keepdims=True)
    s = np.divide(s, std, out=np.zeros_like(s), where=std > 1e-12)
    if np.ndim(level_db) == 0:
        if s.shape[0] != 2:
            raise ValueError(f"a scalar level_db mixes 2 sources, got {s.shape[0]}")
        s[0] *= 10.0 ** (level_db / 40.0)
        s[1] *= 10.0 ** (-level_db / 40.0)
    else:
        gains = np.asarray(level_db, dtype=np.float64)
        if gains.shape != (s.shape[0],):
            raise ValueError(f"need one level per source ({s.shape[0]}), got {gains.shape}")
        s *= (10.0 ** (gains / 20.0))[:, None]
    m_std = s.sum(axis=0).std()
    if m_std > 1e-12:
        s /= m_std
    sources = s.astype(np.float32)
    mixture = sources[0].copy()
    for k in range(1, sources.shape[0]):
        mixture += sources[k]
    return mixture, sources


class MixtureDataset(Dataset):
    """S-source mixtures made on the fly, deterministic in ``(seed, index)``.

    Args:
        sources: a :class:`SourceBank` (tasks ``env``/``speech``), or a mapping
            with keys ``"speech"`` and/or ``"env"`` (``mixed`` needs both).
        task: ``"env"``, ``"speech"`` or ``"mixed"``.
        segment_len: samples per example (default 32000 = 4 s at 8 kHz).
        seed: the dataset's seed.
        num_items: ``len(dataset)``; None = unbounded (for training with
            fresh indices; use a batch sampler, not a random sampler).
        level_range_db: relative level range (uniform), default (-5, 5).
        silence_rel, silence_abs: silent-crop threshold (module docstring).
        crop_tries: crop offsets tried per item before drawing another item.
        max_tries: crops tried in all per slot.
        short_env, short_speech: ``"pad"``, ``"loop"`` or ``"join"``.
        num_sources: S, 1 to ``MAX_SOURCES`` (``env`` needs S classes, ``speech`` S
            speakers; ``mixed`` is 2).

    ``dataset[i]`` returns a dict of tensors:
        ``mixture`` ``(T,)`` float32, ``sources`` ``(S, T)`` float32,
        ``labels`` ``(S,)`` int64 (ids into ``class_names``),
        ``level_db`` ``()`` float32 (source 0 over source 1; 0 for S = 1),
        ``source_ids`` ``(S,)`` int64 (first bank item of each source),
        ``index`` ``()`` int64.
    """

    def __init__(
        self,
        sources: SourceBank | Mapping[str, SourceBank],
        task: str,
        segment_len: int = DEFAULT_SEGMENT,
        seed: int = 0,
        num_items: int | None = None,
        *,
        level_range_db: tuple[float, float] = (-5.0, 5.0),
        silence_rel: float = 0.1,
        silence_abs: float = 1e-4,
        crop_tries: int = 3,
        max_tries: int = 12,
        short_env: str = "pad",
        short_speech: str = "join",
        num_sources: int = 2,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        for name, pol in (("short_env", short_env), ("short_speech", short_speech)):
            if pol not in ("pad", "loop", "join"):
                raise ValueError(f"{name} must be 'pad', 'loop' or 'join', got {pol!r}")
        if segment_len < 1:
            raise ValueError(f"segment_len must be positive, got {segment_len}")
        self.task = task
        self.slots = _task_slots(task, short_env, short_speech, int(num_sources))
        self.num_sources = len(self.slots)
        if isinstance(sources, SourceBank):
            if task == "mixed":
                raise ValueError("task 'mixed' needs a mapping {'speech': bank, 'env': bank}")
            sources = {self.slots[0].bank: sources}
        missing = {s.bank for s in self.slots} - set(sources)
        if missing:
            raise ValueError(f"task {task!r} needs source banks {sorted(missing)}")
        self.banks: dict[str, SourceBank] = {k: sources[k] for k in {s.bank for s in self.slots}}
        for key, bank in self.banks.items():
            if len(bank) == 0:
                raise ValueError(f"task {task!r}: the {key!r} bank is empty")
        need = max(2, self.num_sources)
        many = "two" if need == 2 else str(need)
        if task == "env" and len(np.unique(self.banks["env"].label_ids)) < need:
            raise ValueError(f"task 'env' with {self.num_sources} sources needs at least "
                             f"{many} classes in the env bank")
        if task == "speech" and len(self.banks["speech"].group_names) < need:
            raise ValueError(f"task 'speech' with {self.num_sources} sources needs at least "
                             f"{many} speakers (groups) in the bank")

        self.segment_len = int(segment_len)
        self.seed = int(seed)
        self.num_items = num_items
        lo, hi = level_range_db
        if lo > hi:
            raise ValueError(f"level_range_db must be (low, high), got {level_range_db}")
        self.level_range_db = (float(lo), float(hi))
        self.silence_rel = float(silence_rel)
        self.silence_abs = float(silence_abs)
        self.crop_tries = max(1, int(crop_tries))
        self.max_tries = max(1, int(max_tries))

        if task == "env":
            self.class_names: tuple[str, ...] = self.banks["env"].classes
        elif task == "speech":
            self.class_names = ("speech",)
        else:
            self.class_names = ("speech", "env")

    # -- Dataset protocol ---------------------------------------------------
    def __len__(self) -> int:
        return _UNBOUNDED if self.num_items is None else int(self.num_items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if index < 0 or (self.num_items is not None and index >= self.num_items):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        ex = self.example(index)
        return {k: torch.from_numpy(np.asarray(v)) for k, v in ex.items()}

    def __repr__(self) -> str:
        n = "unbounded" if self.num_items is None else self.num_items
        return (f"MixtureDataset(task={self.task!r}, items={n}, segment_len={self.segment_len}, "
                f"seed={self.seed}, banks={ {k: len(b) for k, b in self.banks.items()} })")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """``collate([self[i] for i in indices])`` without a DataLoader."""
        return collate([self[i] for i in indices])

    # -- mixing ---------------------------------------------------------------
    def example(self, index: int) -> dict[str, np.ndarray]:
        """NumPy version of ``self[index]`` (no range check)."""
        rng = np.random.default_rng([self.seed, int(index)])
        S = self.num_sources
        if S == 2:   # the paper's draw, unchanged: one relative level
            levels = rng.uniform(*self.level_range_db)
            level_db = levels
        else:
            lo, hi = self.level_range_db
            levels = rng.uniform(lo / 2, hi / 2, size=S)
            level_db = levels[0] - levels[1] if S > 1 else 0.0
        crops = np.empty((S, self.segment_len), dtype=np.float32)
        ids = np.empty(S, dtype=np.int64)
        labels = np.empty(S, dtype=np.int64)
        earlier: list[int] = []
        for k, slot in enumerate(self.slots):
            bank = self.banks[slot.bank]
            crops[k], ids[k] = self._draw(rng, bank, slot, earlier)
            earlier.append(int(ids[k]))
            if self.task == "env":
                labels[k] = bank.label_ids[ids[k]]
            elif self.task == "speech":
                labels[k] = 0
            else:
                labels[k] = k
        mixture, sources = normalize_mixture(crops, levels)
        return {"mixture": mixture, "sources": sources, "labels": labels,
                "level_db": np.float32(level_db), "source_ids": ids,
                "index": np.int64(index)}

    def _pick(self, rng, bank: SourceBank, slot: _Slot, earlier: list[int]) -> int:
        """A random item index, different in label/group from the items of the
        earlier slots when the slot requires it (rejection sampling, then exact)."""
        n = len(bank)
        if slot.distinct is None or not earlier:
            return int(rng.integers(n))
        ref_ids = bank.label_ids if slot.distinct == "label" else bank.group_ids
        taken = {ref_ids[j] for j in earlier}
        for _ in range(32):
            i = int(rng.integers(n))
            if ref_ids[i] not in taken:
                return i
        allowed = np.flatnonzero(~np.isin(ref_ids, list(taken)))  # rare: dominant classes
        return int(allowed[rng.integers(allowed.size)])

    def _signal(self, rng, bank: SourceBank, i: int, policy: str) -> tuple[np.ndarray, float]:
        """Item ``i`` as a float32 signal of at least ``segment_len`` samples,
        and the RMS used as the silence reference."""
        T = self.segment_len
        x = _as_float(bank.raw(i))
        if x.size >= T:
            return x, bank.rms(i)
        if policy == "join":
            members = bank.group_members[bank.group_ids[i]]
            others = members[members != i]
            parts, total = [x], x.size
            order = rng.permutation(others) if others.size else np.array([i])
            j = 0
            while total < T:
                if j == order.size:  # speaker exhausted: go round again
                    order, j = rng.permutation(members), 0
                y = _as_float(bank.raw(int(order[j])))
                parts.append(y)
                total += y.size
                j += 1
            x = np.concatenate(parts)
            return x, float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        ref = bank.rms(i)
        if policy == "loop":
            return np.tile(x, -(-T // x.size)), ref
        out = np.zeros(T, dtype=np.float32)  # pad
        at = int(rng.integers(T - x.size + 1))
        out[at:at + x.size] = x
        return out, ref

    def _draw(self, rng, bank: SourceBank, slot: _Slot, earlier) -> tuple[np.ndarray, int]:
        T = self.segment_len
        best, best_ratio, best_id = None, -1.0, -1
        tries = 0
        while tries < self.max_tries:
            i = self._pick(rng, bank, slot, earlier)
            x, ref = self._signal(rng, bank, i, slot.short)
            thresh = max(self.silence_abs, self.silence_rel * ref)
            for _ in range(self.crop_tries):
                tries += 1
                at = int(rng.integers(x.size - T + 1))
                crop = x[at:at + T]
                r = float(np.sqrt(np.mean(np.square(crop, dtype=np.float64))))
                if r >= thresh:
                    return crop, i
                ratio = r / thresh
                if ratio > best_ratio:
                    best, best_ratio, best_id = crop, ratio, i
                if tries >= self.max_tries:
                    break
        return best, best_id


def _as_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.int16:
        return x.astype(np.float32) * np.float32(INT16_SCALE)
    return x.astype(np.float32, copy=False)


def collate(batch: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples: ``mixture (B, T)``, ``sources (B, S, T)``,
    ``labels (B, S)``, ``level_db (B,)``, ``source_ids (B, S)``, ``index (B,)``."""
    if not batch:
        raise ValueError("empty batch")
    return {k: torch.stack([torch.as_tensor(ex[k]) for ex in batch]) for k in batch[0]}


class StepBatchSampler(Sampler[list[int]]):
    """Batches of fresh indices: step ``s`` gets ``[s*B, ..., s*B + B - 1]``.

    With :class:`MixtureDataset` this gives new mixtures every step, the same
    ones for the same step in every run, and exact resumption from
    ``start_step``. Use as ``DataLoader(ds, batch_sampler=StepBatchSampler(B,
    start_step), collate_fn=collate, num_workers=...)``.

    Under data parallelism each rank reads its slice of the global batch:
    rank ``r`` of ``R`` gets ``[s*B + r*B/R, ..., s*B + (r+1)*B/R - 1]``, so the
    ranks' batches together are exactly the single-process batch of that step.

    Args:
        batch_size: B, the global batch.
        start_step: first step produced.
        num_steps: how many batches; None = endless.
        rank, world_size: this rank's slice (B must divide by ``world_size``).
    """

    def __init__(self, batch_size: int, start_step: int = 0, num_steps: int | None = None,
                 *, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must split evenly over {world_size} "
                             f"ranks (rank {rank})")
        self.batch_size, self.start_step = int(batch_size), int(start_step)
        self.num_steps = num_steps
        self.local = self.batch_size // world_size
        self.offset = rank * self.local

    def __iter__(self) -> Iterator[list[int]]:
        s = self.start_step
        while self.num_steps is None or s < self.start_step + self.num_steps:
            base = s * self.batch_size + self.offset
            yield list(range(base, base + self.local))
            s += 1

    def __len__(self) -> int:
        return sys.maxsize if self.num_steps is None else int(self.num_steps)


@dataclass
class DataSplits:
    """Train/val/test datasets of one task (online ``MixtureDataset`` or pre-mixed
    ``train.data.premixed.PremixedDataset``), their class names and source count."""

    train: MixtureDataset
    val: MixtureDataset
    test: MixtureDataset

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def num_sources(self) -> int:
        return self.train.num_sources
