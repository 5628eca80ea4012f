"""Reading audio files for training, with errors that name the file.

Everything in the training pipeline runs at one fixed sample rate (8 kHz by
default, as in the paper). We deliberately do not resample: a file at another
rate is a data-preparation mistake, and silently resampling it would hide that
and cost time on every epoch. Convert the data once, offline, instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf

__all__ = [
    "AudioFileError",
    "SampleRateError",
    "audio_info",
    "read_audio",
    "int16_to_float32",
    "INT16_SCALE",
    "SAMPLE_RATE",
]

PathLike = Union[str, os.PathLike]

#: The one sample rate of the whole pipeline (the paper's 8 kHz).
SAMPLE_RATE = 8000

#: int16 samples are mapped to float by x / 32768, the convention of
#: soundfile/libsndfile, so float audio lies in [-1, 1).
INT16_SCALE = 1.0 / 32768.0

# Integer PCM subtypes whose samples fit in int16 without loss; files of these
# types may be stored as int16 in memory (half the size of float32).
_INT16_EXACT_SUBTYPES = {"PCM_S8", "PCM_U8", "PCM_16"}


class AudioFileError(ValueError):
    """An audio file is missing, unreadable, corrupt, empty or not usable.

    The message always starts with the file's path, then says what is wrong.
    """

    def __init__(self, path: PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SampleRateError(AudioFileError):
    """A file's sample rate differs from the one the pipeline runs at."""


def int16_to_float32(x: np.ndarray) -> np.ndarray:
    """int16 PCM (any shape) -> float32 in [-1, 1), same shape."""
    return x.astype(np.float32) * np.float32(INT16_SCALE)


def audio_info(path: PathLike, expected_sr: int | None = None):
    """The soundfile header of ``path``, checked: the one header check of the package.

    Raises :class:`AudioFileError` naming the file when it is missing, not a regular
    file, not readable audio or has no samples, and :class:`SampleRateError` when
    ``expected_sr`` is given and differs (no resampling: convert the data offline).
    """
    path = Path(path)
    if not path.exists():
        raise AudioFileError(path, "file not found")
    if not path.is_file():
        raise AudioFileError(path, "not a regular file")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises various types for bad headers
        raise AudioFileError(path, f"unreadable or corrupt audio file ({e})") from None
    if expected_sr is not None and info.samplerate != expected_sr:
        raise SampleRateError(
            path,
            f"sample rate is {info.samplerate} Hz but {expected_sr} Hz is required "
            "(resampling is not supported: convert the data offline)",
        )
    if info.frames == 0:
        raise AudioFileError(path, "contains no samples (empty audio)")
    return info


def read_audio(
    path: PathLike,
    expected_sr: int | None = SAMPLE_RATE,
    *,
    dtype: str = "float32",
    downmix: bool = True,
) -> np.ndarray:
    """Read one audio file as a 1-D array.

    Args:
        path: any format libsndfile reads (FLAC, WAV, OGG, ...).
        expected_sr: required sample rate in Hz; ``None`` accepts any rate.
            A mismatch raises :class:`SampleRateError` (no resampling).
        dtype: ``"float32"`` (values in [-1, 1)), ``"int16"`` (raw PCM; only
            for integer-PCM files of at most 16 bits, so nothing is lost), or
            ``"auto"`` (int16 when the file is such PCM, else float32).
        downmix: multi-channel files are averaged to mono when True (a note:
            this is a plain mean over channels, no phase handling); when False
            they raise :class:`AudioFileError`.

    Returns:
        ``x``: shape ``(T,)``, ``T >= 1``, float32 or int16, all finite.

    Raises:
        AudioFileError: the file is missing, not a file, unreadable or corrupt,
            has zero samples, contains NaN/inf, or has several channels while
            ``downmix=False``. The message names the file and the problem.
        SampleRateError: (a subclass of AudioFileError) wrong sample rate.
    """
    path = Path(path)
    if dtype not in ("float32", "int16", "auto"):
        raise ValueError(f"dtype must be 'float32', 'int16' or 'auto', got {dtype!r}")
    info = audio_info(path, expected_sr)
    if info.channels > 1 and not downmix:
        raise AudioFileError(path, f"has {info.channels} channels, mono is required")

    int16_ok = info.subtype in _INT16_EXACT_SUBTYPES
    if dtype == "int16" and not int16_ok:
        raise AudioFileError(
            path, f"subtype {info.subtype} cannot be read as int16 without loss"
        )
    read_int16 = dtype == "int16" or (dtype == "auto" and int16_ok)

    try:
        x, _ = sf.read(str(path), dtype="int16" if read_int16 else "float32",
                       always_2d=True)
    except Exception as e:
        raise AudioFileError(path, f"corrupt audio data, decoding failed ({e})") from e

    if x.shape[0] == 0:
        raise AudioFileError(path, "contains no samples (empty audio)")
    # A truncated file can decode "successfully" to fewer frames than the header
    # promises; treat that as corruption rather than training on a stub.
    if info.frames > 0 and x.shape[0] != info.frames:
        raise AudioFileError(
            path, f"corrupt or truncated: header says {info.frames} frames, "
            f"decoded {x.shape[0]}"
        )

    if x.shape[1] > 1:
        # Mean over channels; int16 is averaged in int32 to avoid overflow.
        if read_int16:
            x = np.round(x.astype(np.int32).mean(axis=1)).astype(np.int16)
        else:
            x = x.mean(axis=1, dtype=np.float32)
    else:
        x = x[:, 0]

    if not read_int16 and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioFileError(path, f"contains {bad} non-finite samples (NaN/inf)")
    return np.ascontiguousarray(x)
