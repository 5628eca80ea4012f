"""``python -m train.separate RUN_DIR_OR_CHECKPOINT AUDIO... --out-dir DIR``.

Separates recordings with a trained model: each file is read with soundfile
(WAV, FLAC, OGG, ...; several channels are averaged to mono), resampled to the
model's 8 kHz with soxr, cut into overlapping chunks so a file of any length
fits in memory, separated chunk by chunk, stitched back (the sources of each
chunk are matched to the previous chunk's over their overlap, since a
separator may output them in either order, then cross-faded linearly), and
resampled back to the file's rate. Writes ``<name>_s1.wav ... <name>_sC.wav``,
each exactly as long as the input.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from ugr_kernels import pit_best_perm

from .audio import AudioFileError, audio_info
from .evaluate import load_trained
from .mixing import SAMPLE_RATE

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
    if info.frames == 0:
        raise AudioFileError(path, "contains no samples (empty audio)")
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
        raise RuntimeError(f"resampling from {rate_in} Hz to {rate_out} Hz needs soxr "
                           f"(pip install soxr)") from None

    y = soxr.resample(np.ascontiguousarray(x.T), rate_in, rate_out, quality="HQ")
    return y.T


def separate_file(model, path: Path, *, chunk: int, overlap: int, batch_size: int,
                  device: torch.device, show_progress: bool) -> tuple[np.ndarray, int, str]:
    """Separate one file: ``(sources (C, T) float32 at the file's rate, rate, note)``."""
    x, rate, channels = read_mono(path)
    note = f"{channels} channels averaged to mono" if channels > 1 else "mono"
    y = resample(x, rate, SAMPLE_RATE)
    # The model was trained on zero-mean, unit-std mixtures (train.mixing.normalize_mixture).
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


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.separate",
        description="Separate recordings with a model trained by python -m train. Reads any "
                    "file soundfile can (WAV, FLAC, OGG, ...; several channels are averaged "
                    "to mono), resamples it to the model's 8 kHz with soxr, separates it in "
                    "overlapping chunks (sources matched between chunks over the overlap, "
                    "then linearly cross-faded), resamples back and writes "
                    "OUT_DIR/<name>_s1.wav ... <name>_sC.wav (32-bit float WAV at the "
                    "input's rate, exactly as long as the input).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder written by python -m train, or its checkpoint.pt")
    p.add_argument("audio", nargs="+", help=f"audio files to separate (at least {MIN_SECONDS} s)")
    p.add_argument("--out-dir", required=True, help="folder for the separated sources")
    p.add_argument("--chunk-seconds", type=float, default=None,
                   help="length of the chunks the model sees at once (default: the run's "
                        "--segment-seconds, the length it was trained on); a file no longer "
                        "than one chunk is separated in one call")
    p.add_argument("--overlap-seconds", type=float, default=None,
                   help=f"overlap of consecutive chunks, at most half a chunk (default: "
                        f"{DEFAULT_OVERLAP_FRACTION:g} of a chunk)")
    p.add_argument("--batch-size", type=int, default=4, help="chunks per model call")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true",
                   help=f"no progress bar (shown for inputs of {PROGRESS_MIN_CHUNKS}+ chunks)")
    return p


def main(argv=None) -> list[Path]:
    """``python -m train.separate``; exits 2 with a one-line message on bad input."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        _fail("--batch-size and --threads must be positive integers")
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [Path(a) for a in args.audio]
    try:
        for path in paths:           # every input is checked before any work
            check_input(path)
    except AudioFileError as exc:
        _fail(str(exc))
    names = [p.stem for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        _fail(f"several inputs are named {dup[0]!r}: their outputs would overwrite each other")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, run_args = load_trained(args.run, device)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    chunk_s = args.chunk_seconds or float(run_args.get("segment_seconds", 4.0))
    overlap_s = args.overlap_seconds if args.overlap_seconds is not None \
        else DEFAULT_OVERLAP_FRACTION * chunk_s
    chunk = int(round(chunk_s * SAMPLE_RATE))
    overlap = int(round(overlap_s * SAMPLE_RATE))
    if chunk < 2 or not 1 <= overlap <= chunk // 2:
        _fail(f"need --chunk-seconds > 0 and 0 < --overlap-seconds <= half a chunk; got "
              f"chunk {chunk_s:g} s, overlap {overlap_s:g} s")
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create --out-dir {out_dir} ({exc.strerror})")
    print(f"model {run_args['model']} (step {run_args['checkpoint_step']}) on {device}; "
          f"chunks of {chunk / SAMPLE_RATE:g} s overlapping by {overlap / SAMPLE_RATE:g} s")
    written = []
    for path in paths:
        try:
            sources, rate, note = separate_file(
                model, path, chunk=chunk, overlap=overlap, batch_size=args.batch_size,
                device=device, show_progress=not args.no_progress)
        except (AudioFileError, RuntimeError) as exc:
            _fail(str(exc))
        files = write_sources(sources, rate, out_dir, path.stem)
        written += files
        print(f"{path}: {sources.shape[1] / rate:.2f} s at {rate} Hz, {note} -> "
              f"{', '.join(f.name for f in files)}")
    return written


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
