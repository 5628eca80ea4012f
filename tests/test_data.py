"""Audio reading, catalogues and source loading (train.audio, train.datasets).

Real-data tests read ../shared/data (override with UGR_DATA_DIR) and skip when
it is absent; they load only small subsets to stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.audio import AudioFileError, SampleRateError, read_audio
from train.datasets import (
    SourceCatalog,
    SourceItem,
    csv_catalog,
    esc50_catalog,
    hash_split,
    load_sources,
    speech_catalog,
)

DATA_DIR = Path(os.environ.get("UGR_DATA_DIR")
                or Path(__file__).resolve().parents[2] / "shared" / "data")


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


# --------------------------------------------------------------------------- catalogues

def test_esc50_catalog_split():
    cat = esc50_catalog(_need_real("esc50"))
    assert len(cat) == 2000 and len(cat.classes) == 50
    assert cat.counts("split") == {"train": 1600, "val": 200, "test": 200}
    assert cat.classes[0] == "dog"  # ordered by ESC-50 target id
    for it in cat:
        assert cat.classes.index(it.label) == int(it.meta["target"])
        assert (it.split == "train") == (it.meta["fold"] != "5")
    for split in ("val", "test"):
        per_class = cat.split(split).counts("label")
        assert set(per_class) == set(cat.classes) and set(per_class.values()) == {4}
    val_keys = {it.key for it in cat.split("val")}
    assert not val_keys & {it.key for it in cat.split("test")}
    # val = first half of each class's fold-5 files by sorted name
    dogs5 = sorted(it.key for it in cat if it.label == "dog" and it.meta["fold"] == "5")
    assert [k in val_keys for k in dogs5] == [True] * 4 + [False] * 4
    assert cat[0].group == "100032"  # Freesound source id
    assert cat.split("val").classes == cat.classes  # vocabulary kept by subsets


def test_speech_catalog_split_by_speaker():
    cat = speech_catalog(_need_real("speech"))
    assert len(cat) == 7482 and cat.classes == ("speech",)
    assert cat.counts("split") == {"train": 5495, "val": 1073, "test": 914}
    groups = {s: set(cat.split(s).groups) for s in ("train", "val", "test")}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert len(cat.groups) == 239 + 6
    assert "fsdd/theo" in groups["val"] and "fsdd/yweweler" in groups["test"]
    assert len(speech_catalog(DATA_DIR, corpora=["fsdd"])) == 3000


def test_hash_split_is_stable_and_proportional():
    keys = [f"spk{i}" for i in range(4000)]
    a = [hash_split(k) for k in keys]
    assert a == [hash_split(k) for k in keys]
    frac = {s: a.count(s) / len(a) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.8) < 0.03 and abs(frac["val"] - 0.1) < 0.02
    assert hash_split("anything", (1.0, 0.0, 0.0)) == "train"


def test_csv_catalog(tmp_path):
    (tmp_path / "audio").mkdir()
    rows = ["filename,label,speaker"]
    for i in range(60):
        rows.append(f"audio/{i}.wav,{'dog' if i % 2 else 'cat'},s{i % 12}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    cat = csv_catalog(tmp_path / "list.csv")
    assert len(cat) == 60 and cat.classes == ("cat", "dog")
    assert cat[0].path == str(tmp_path / "audio" / "0.wav")
    assert cat[1].group == "s1"
    # no split column: hash of the group, so a speaker never spans splits
    by_group = {}
    for it in cat:
        by_group.setdefault(it.group, set()).add(it.split)
    assert all(len(v) == 1 for v in by_group.values())
    assert [it.split for it in cat] == [it.split for it in csv_catalog(tmp_path / "list.csv")]

    (tmp_path / "s.csv").write_text("filename,label,split\na.wav,x,val\nb.wav,y,test\n")
    cat2 = csv_catalog(tmp_path / "s.csv", root="/data")
    assert [it.split for it in cat2] == ["val", "test"] and cat2[0].path == "/data/a.wav"
    assert cat2[0].group == "a.wav"  # no group column: each file its own group

    (tmp_path / "bad.csv").write_text("file,label\na.wav,x\n")
    with pytest.raises(ValueError, match="filename"):
        csv_catalog(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError):
        csv_catalog(tmp_path / "missing.csv")


def test_catalog_helpers():
    items = [SourceItem(f"k{i}", "ab"[i % 2], f"g{i // 2}", "train", audio=np.ones(4, np.float32))
             for i in range(10)]
    cat = SourceCatalog(items, name="t", classes=["b", "a"])
    assert cat.classes == ("b", "a") and len(cat.take(3)) == 3
    s = cat.sample(4, seed=1)
    assert len(s) == 4 and [it.key for it in s] == [it.key for it in cat.sample(4, seed=1)]
    assert cat[2:4].classes == ("b", "a") and len(cat.filter(lambda it: it.label == "a")) == 5
    with pytest.raises(ValueError):
        SourceCatalog(items + items[:1])  # duplicate key
    with pytest.raises(ValueError):
        SourceItem("x", "a", "g", "training", path="x.wav")  # bad split


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
