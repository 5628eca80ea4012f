"""Reading audio files (train.data.audio): formats, int16, and errors naming the file.

Real-data tests read ../shared/data (override with UGR_DATA_DIR) and skip when
it is absent; they load only small subsets to stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.data.audio import AudioFileError, SampleRateError, read_audio

DATA_DIR = Path(os.environ.get("UGR_DATA_DIR")
                or Path(__file__).resolve().parents[4] / "shared" / "data")


def _need_real(sub: str) -> Path:
    if not (DATA_DIR / sub / "meta.csv").is_file():
        pytest.skip(f"real audio not found at {DATA_DIR / sub} (set UGR_DATA_DIR)")
    return DATA_DIR


def _write(path: Path, x: np.ndarray, sr: int = 8000, subtype: str | None = None) -> Path:
    sf.write(str(path), x, sr, subtype=subtype)
    return path


# --------------------------------------------------------------------------- read_audio

def test_read_audio_float_and_int16(tmp_path):
    x = (np.sin(np.arange(800) * 0.1) * 0.5).astype(np.float32)
    p = _write(tmp_path / "a.flac", x, subtype="PCM_16")
    y = read_audio(p)
    assert y.dtype == np.float32 and y.shape == (800,)
    assert np.allclose(y, x, atol=1 / 32768)
    yi = read_audio(p, dtype="int16")
    assert yi.dtype == np.int16 and np.array_equal(yi.astype(np.float32) / 32768, y)
    assert read_audio(p, dtype="auto").dtype == np.int16
    # A float WAV cannot be stored as int16 losslessly: auto keeps float32.
    pf = _write(tmp_path / "f.wav", x, subtype="FLOAT")
    assert read_audio(pf, dtype="auto").dtype == np.float32
    with pytest.raises(AudioFileError, match="f.wav"):
        read_audio(pf, dtype="int16")


def test_read_audio_missing_file_names_it(tmp_path):
    p = tmp_path / "nope.flac"
    with pytest.raises(AudioFileError) as e:
        read_audio(p)
    assert str(p) in str(e.value) and "not found" in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("content", [b"this is not a flac file" * 50, b""])
def test_read_audio_corrupt_file_names_it(tmp_path, content):
    p = tmp_path / "x.flac"
    p.write_bytes(content)
    with pytest.raises(AudioFileError) as e:
        read_audio(p)
    assert str(p) in str(e.value)


def test_read_audio_truncated_flac(tmp_path):
    rng = np.random.default_rng(0)
    p = _write(tmp_path / "t.flac", rng.uniform(-0.5, 0.5, 16000), subtype="PCM_16")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioFileError, match="t.flac"):
        read_audio(p)


def test_read_audio_empty_nonfinite_rate_channels(tmp_path):
    empty = _write(tmp_path / "empty.wav", np.zeros(0, np.float32), subtype="PCM_16")
    with pytest.raises(AudioFileError, match="empty.wav.*no samples"):
        read_audio(empty)

    x = np.zeros(100, np.float32)
    x[10] = np.nan
    nan = _write(tmp_path / "nan.wav", x, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="nan.wav.*non-finite"):
        read_audio(nan)

    hi = _write(tmp_path / "16k.wav", np.zeros(160, np.float32), sr=16000)
    with pytest.raises(SampleRateError, match="16k.wav.*16000 Hz.*8000 Hz"):
        read_audio(hi)
    assert read_audio(hi, expected_sr=None).shape == (160,)

    st = np.stack([np.full(50, 0.25), np.full(50, 0.75)], axis=1)
    stereo = _write(tmp_path / "st.wav", st, subtype="FLOAT")
    y = read_audio(stereo)
    assert y.shape == (50,) and np.allclose(y, 0.5)
    with pytest.raises(AudioFileError, match="st.wav.*2 channels"):
        read_audio(stereo, downmix=False)


def test_read_real_file():
    d = _need_real("esc50")
    x = read_audio(d / "esc50" / "1-100032-A-0.flac")
    assert x.shape == (40000,) and x.dtype == np.float32
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0 and np.abs(x).max() > 0


