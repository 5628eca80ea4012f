"""Separating recordings of any length with a trained model (``python -m train.separate``).

Each file is read with soundfile
(WAV, FLAC, OGG, ...; several channels are averaged to mono), resampled to the
model's 8 kHz with soxr, cut into overlapping chunks so a file of any length
fits in memory, separated chunk by chunk, stitched back (the sources of each
chunk are matched to the previous chunk's over their overlap, since a
separator may output them in either order, then cross-faded linearly), and
resampled back to the file's rate. Writes ``<name>_s1.wav ... <name>_sC.wav``,
each exactly as long as the input.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from ugr_kernels import pit_best_perm

from ..data.audio import SAMPLE_RATE, AudioFileError, audio_info

MIN_SECONDS = 0.1          # shorter than this is not a recording worth separating
DEFAULT_OVERLAP_FRACTION = 0.25
PROGRESS_MIN_CHUNKS = 8    # a bar only for inputs long enough to wait for


# --------------------------------------------------------------------------- chunking
def chunk_starts(length: int, chunk: int, overlap: int) -> list[int]:
    """Start samples of the chunks covering ``length`` samples: ``0, hop, 2 hop, ...``
    with ``hop = chunk - overlap``; the last chunk may run past the end (zero padded)."""
    if length <= chunk:
        return [0]
    hop = chunk - overlap
    return [k * hop for k in range(1 + math.ceil((length - chunk) / hop))]


def align_sources(previous: Tensor, current: Tensor) -> Tensor:
    """Permutation of ``current``'s sources that best continues ``previous``.

    Args:
        previous: (C, O) the previous chunk's (already aligned) sources over the overlap.
        current: (C, O) this chunk's sources over the same samples.
    Returns:
        (C,) int64 ``perm`` such that ``current[perm]`` is aligned: the assignment with the
        least total squared difference (scale-aware, so a silent source matches silence).
    """
    diff = current[:, None, :] - previous[None, :, :]              # (C_cur, C_prev, O)
    score = -(diff.double() ** 2).sum(-1)                           # higher is better
    return pit_best_perm(score[None])[0]


@torch.inference_mode()
def separate_waveform(model: Callable[[Tensor], Tensor], mixture: Tensor, chunk: int,
                      overlap: int, *, batch_size: int = 4,
                      device: Optional[torch.device] = None, progress=None) -> Tensor:
    """Separate a long mono signal in overlapping chunks.

    Args:
        model: maps (B, T) mixtures to (B, C, T) sources (e.g. SuDoRM-RF in eval mode).
        mixture: (T,) float at the model's rate.
        chunk: samples per chunk; a signal no longer than this is one model call.
        overlap: samples shared by consecutive chunks, 1 <= overlap <= chunk // 2. Over
            it the next chunk's sources are matched to the previous chunk's
            (``align_sources``) and the two are cross-faded with linear ramps that sum
            to 1, so a model that is local in time gives exactly its whole-signal output.
        batch_size: chunks per model call.
        device: where the model runs (default: where ``mixture`` is).
        progress: a tqdm-like object, updated once per chunk.

    Returns:
        (C, T) float32 sources on the CPU.
    """
    if not 1 <= overlap <= chunk // 2:
        raise ValueError(f"overlap must be between 1 and chunk // 2 = {chunk // 2} samples, "
                         f"got {overlap}")
    device = device or mixture.device
    length = mixture.shape[-1]
    starts = chunk_starts(length, chunk, overlap)
    if len(starts) == 1:
        out = model(mixture[None].to(device))[0].float().cpu()
        if progress is not None:
            progress.update(1)
        return out
    hop = chunk - overlap
    padded = torch.nn.functional.pad(mixture, (0, starts[-1] + chunk - length))
    fade_in = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
    out: Optional[Tensor] = None
    previous: Optional[Tensor] = None
    for first in range(0, len(starts), batch_size):
        ks = range(first, min(len(starts), first + batch_size))
        batch = torch.stack([padded[starts[k]:starts[k] + chunk] for k in ks]).to(device)
        estimates = model(batch).float().cpu()                      # (b, C, chunk)
        if out is None:
            out = torch.zeros(estimates.shape[1], padded.shape[0])
        for est, k in zip(estimates, ks):
            if previous is not None:
                est = est[align_sources(previous[:, hop:], est[:, :overlap])]
            weight = torch.ones(chunk)
            if k > 0:
                weight[:overlap] = fade_in
            if k < len(starts) - 1:
                weight[hop:] = 1.0 - fade_in
            out[:, starts[k]:starts[k] + chunk] += weight * est
            previous = est
        if progress is not None:
            progress.update(len(ks))
    return out[:, :length]


# --------------------------------------------------------------------------- files
def check_input(path: Path):
    """Header checks before any work: readable, not empty, not too short."""
    info = audio_info(path)
    _check_duration(path, info.frames, info.samplerate)
    return info


def _check_duration(path: Path, frames: int, rate: int) -> None:
    if frames < MIN_SECONDS * rate:
        raise AudioFileError(path, f"is too short: {frames} samples ({frames / rate:.3f} s at "
                                   f"{rate} Hz); at least {MIN_SECONDS} s is needed")


def read_mono(path: Path) -> tuple[np.ndarray, int, int]:
    """``(samples (T,) float64, sample rate, number of channels)``; channels averaged."""
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as exc:
        raise AudioFileError(path, f"corrupt audio data, decoding failed ({exc})") from None
    if data.shape[0] == 0:
        raise AudioFileError(path, "contains no samples (empty audio)")
    _check_duration(path, data.shape[0], rate)
    if not np.isfinite(data).all():
        raise AudioFileError(path, "contains non-finite samples (NaN/inf)")
    return data.mean(axis=1), rate, data.shape[1]


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """soxr (high quality) along the last axis of (T,) or (C, T)."""
    if rate_in == rate_out:
        return x
    try:
        import soxr
    except ImportError:
        raise ModuleNotFoundError(f"resampling from {rate_in} Hz to {rate_out} Hz needs soxr "
                                  f"(pip install soxr)") from None

    y = soxr.resample(np.ascontiguousarray(x.T), rate_in, rate_out, quality="HQ")
    return y.T


def separate_file(model, path: Path, *, chunk: int, overlap: int, batch_size: int,
                  device: torch.device, show_progress: bool) -> tuple[np.ndarray, int, str]:
    """Separate one file: ``(sources (C, T) float32 at the file's rate, rate, note)``."""
    x, rate, channels = read_mono(path)
    note = f"{channels} channels averaged to mono" if channels > 1 else "mono"
    y = resample(x, rate, SAMPLE_RATE)
    # The model was trained on zero-mean, unit-std mixtures (train.data.mixing.normalize_mixture).
    y = y - y.mean()
    scale = float(y.std())
    if scale < 1e-10:
        raise AudioFileError(path, "is silent (all samples equal)")
    mix = torch.from_numpy(y / scale).float()
    n_chunks = len(chunk_starts(mix.shape[0], chunk, overlap))
    bar = None
    if show_progress and n_chunks >= PROGRESS_MIN_CHUNKS:
        from tqdm import tqdm
        bar = tqdm(total=n_chunks, desc=path.name, unit="chunk", leave=False)
    try:
        est = separate_waveform(model, mix, chunk, overlap, batch_size=batch_size,
                                device=device, progress=bar).double().numpy()
    finally:
        if bar is not None:
            bar.close()
    # SI-SDR training leaves the output gain free: one gain for all sources makes their
    # sum the least-squares fit of the mixture, then the file's own level is restored.
    total = est.sum(0)
    gain = float(np.dot(total, mix.double().numpy()) / max(np.dot(total, total), 1e-20))
    if not math.isfinite(gain) or gain <= 0:
        gain = 1.0
    sources = resample(est * gain * scale, SAMPLE_RATE, rate)
    frames = x.shape[0]
    if sources.shape[1] < frames:   # resampling can be a sample short or long
        sources = np.pad(sources, ((0, 0), (0, frames - sources.shape[1])))
    return sources[:, :frames].astype(np.float32), rate, note


def write_sources(sources: np.ndarray, rate: int, out_dir: Path, name: str) -> list[Path]:
    """``<name>_s1.wav ...`` as 32-bit float WAV (no clipping), all or nothing: each is
    written to a temporary file first and the set is renamed into place at the end."""
    targets = [out_dir / f"{name}_s{c + 1}.wav" for c in range(sources.shape[0])]
    temps = []
    try:
        for src in sources:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".wav.tmp", dir=out_dir)
            os.close(fd)
            temps.append(tmp)
            sf.write(tmp, src, rate, subtype="FLOAT", format="WAV")
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return targets
