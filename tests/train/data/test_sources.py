"""Loading sources (train.data.sources): preload and lazy, validation naming the file.

Real-data tests read ../shared/data (override with UGR_DATA_DIR) and skip when
it is absent; they load only small subsets to stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.data.audio import AudioFileError
from train.data.catalogs import SourceItem, csv_catalog, esc50_catalog
from train.data.sources import load_sources

DATA_DIR = Path(os.environ.get("UGR_DATA_DIR")
                or Path(__file__).resolve().parents[4] / "shared" / "data")


def _need_real(sub: str) -> Path:
    if not (DATA_DIR / sub / "meta.csv").is_file():
        pytest.skip(f"real audio not found at {DATA_DIR / sub} (set UGR_DATA_DIR)")
    return DATA_DIR


def _write(path: Path, x: np.ndarray, sr: int = 8000, subtype: str | None = None) -> Path:
    sf.write(str(path), x, sr, subtype=subtype)
    return path


# --------------------------------------------------------------------------- loading

def _folder(tmp_path, n=6):
    rng = np.random.default_rng(0)
    rows = ["filename,label,split"]
    for i in range(n):
        _write(tmp_path / f"{i}.flac", rng.uniform(-0.3, 0.3, 1000 + 100 * i), subtype="PCM_16")
        rows.append(f"{i}.flac,{'ab'[i % 2]},train")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return csv_catalog(tmp_path / "m.csv")


def test_load_sources_preload_and_lazy(tmp_path):
    cat = _folder(tmp_path)
    bank = load_sources(cat, progress=False)
    assert bank.preloaded and len(bank) == 6 and bank.classes == ("a", "b")
    assert bank.raw(0).dtype == np.int16  # 16-bit PCM kept as int16
    assert bank.audio(2).dtype == np.float32
    assert bank.lengths.tolist() == [1000 + 100 * i for i in range(6)]
    assert bank.label_ids.tolist() == [0, 1] * 3
    assert 0.1 < bank.rms(0) < 0.25
    lazy = load_sources(cat, preload=False, progress=False)
    assert not lazy.preloaded and np.array_equal(lazy.audio(3), bank.audio(3))
    assert lazy.rms(3) == pytest.approx(bank.rms(3))
    f32 = load_sources(cat, progress=False, dtype="float32")
    assert f32.raw(0).dtype == np.float32


def test_load_sources_fails_before_training_naming_file(tmp_path):
    cat = _folder(tmp_path)
    (tmp_path / "3.flac").write_bytes(b"garbage" * 100)
    with pytest.raises(AudioFileError) as e:
        load_sources(cat, progress=False)
    assert str(tmp_path / "3.flac") in str(e.value)
    (tmp_path / "4.flac").unlink()
    with pytest.raises(AudioFileError, match="4.flac.*not found"):
        load_sources(cat.filter(lambda it: it.key != "3.flac"), preload=False, progress=False)


def test_load_sources_in_memory_items():
    good = SourceItem("g", "a", "g", "train", audio=np.ones(10, np.float32))
    bad = SourceItem("nan-clip", "a", "g2", "train", audio=np.array([0.0, np.nan], np.float32))
    assert load_sources([good], progress=False).lengths.tolist() == [10]
    with pytest.raises(AudioFileError, match="nan-clip"):
        load_sources([good, bad], progress=False)


def test_load_real_subset():
    d = _need_real("esc50")
    cat = esc50_catalog(d).split("train").sample(40, seed=0)
    bank = load_sources(cat, progress=False)
    assert len(bank) == 40 and bank.lengths.tolist() == [40000] * 40
    assert bank.raw(0).dtype == np.int16 and len(bank.classes) == 50
    assert all(bank.rms(i) > 1e-4 for i in range(40))
