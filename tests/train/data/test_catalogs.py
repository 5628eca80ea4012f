"""Catalogues (train.data.catalogs): ESC-50, speech and CSV catalogues, splits, helpers.

Real-data tests read ../shared/data (override with UGR_DATA_DIR) and skip when
it is absent; they load only small subsets to stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.data.catalogs import (
    SourceCatalog,
    SourceItem,
    csv_catalog,
    esc50_catalog,
    hash_split,
    speech_catalog,
)

DATA_DIR = Path(os.environ.get("UGR_DATA_DIR")
                or Path(__file__).resolve().parents[4] / "shared" / "data")


def _need_real(sub: str) -> Path:
    if not (DATA_DIR / sub / "meta.csv").is_file():
        pytest.skip(f"real audio not found at {DATA_DIR / sub} (set UGR_DATA_DIR)")
    return DATA_DIR


def _write(path: Path, x: np.ndarray, sr: int = 8000, subtype: str | None = None) -> Path:
    sf.write(str(path), x, sr, subtype=subtype)
    return path


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


