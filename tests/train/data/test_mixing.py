"""Online mixing (train.data.mixing): determinism, normalisation, levels, silence
skipping, task rules, batching. Uses small in-memory banks (fast); real-data
tests load small subsets and skip when ../shared/data is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from train.data.catalogs import SourceCatalog, SourceItem, esc50_catalog, speech_catalog
from train.data.mixing import (
    TASKS,
    MixtureDataset,
    StepBatchSampler,
    collate,
    normalize_mixture,
)
from train.data.sources import load_sources

DATA_DIR = Path(os.environ.get("UGR_DATA_DIR")
                or Path(__file__).resolve().parents[4] / "shared" / "data")
T = 1600  # short segments keep the tests fast


def _noise_bank(n_classes=4, per_class=3, length=3000, seed=0, name="env"):
    rng = np.random.default_rng(seed)
    items = [SourceItem(f"{name}{c}_{j}", f"c{c}", f"{name}{c}_{j}", "train",
                        audio=(rng.standard_normal(length)
                               * rng.uniform(0.01, 0.3)).astype(np.float32))
             for c in range(n_classes) for j in range(per_class)]
    return load_sources(SourceCatalog(items, name=name), progress=False)


def _speech_bank(n_speakers=4, per_speaker=5, length=500, seed=1):
    """Short clips (shorter than T) so the speech task must join them."""
    rng = np.random.default_rng(seed)
    items = [SourceItem(f"s{s}_{j}", "speech", f"spk{s}", "train",
                        audio=(rng.standard_normal(length) * 0.1).astype(np.float32))
             for s in range(n_speakers) for j in range(per_speaker)]
    return load_sources(SourceCatalog(items, name="speech"), progress=False)


@pytest.fixture(scope="module")
def banks():
    return {"env": _noise_bank(), "speech": _speech_bank()}


def _ds(banks, task, **kw):
    kw.setdefault("num_items", 50)
    return MixtureDataset(banks, task, segment_len=T, seed=kw.pop("seed", 7), **kw)


@pytest.mark.parametrize("task", TASKS)
def test_item_layout_and_consistency(banks, task):
    ds = _ds(banks, task)
    ex = ds[3]
    assert ex["mixture"].shape == (T,) and ex["mixture"].dtype == torch.float32
    assert ex["sources"].shape == (2, T) and ex["sources"].dtype == torch.float32
    assert ex["labels"].shape == (2,) and ex["labels"].dtype == torch.int64
    for i in range(20):
        ex = ds[i]
        # exact: the mixture is the float32 sum of the float32 sources
        assert torch.equal(ex["mixture"], ex["sources"][0] + ex["sources"][1])
        m = ex["mixture"].double()
        assert abs(m.mean()) < 1e-5 and abs(m.std(unbiased=False) - 1) < 1e-4
        assert ex["sources"].double().mean(dim=1).abs().max() < 1e-5
        assert torch.isfinite(ex["sources"]).all()


def test_determinism(banks):
    a, b = _ds(banks, "env"), _ds(banks, "env")
    x5 = a[5]
    _ = [b[i] for i in (9, 2, 5, 1)]  # access order and history must not matter
    for k, v in x5.items():
        assert torch.equal(v, b[5][k])
    assert not torch.equal(a[5]["mixture"], a[6]["mixture"])
    assert not torch.equal(a[5]["mixture"], _ds(banks, "env", seed=8)[5]["mixture"])


def test_relative_level(banks):
    ds = _ds(banks, "mixed", num_items=300)
    lv = []
    for i in range(300):
        ex = ds.example(i)
        s = ex["sources"].astype(np.float64)
        measured = 10 * np.log10(s[0].var() / s[1].var())
        assert measured == pytest.approx(float(ex["level_db"]), abs=1e-3)
        lv.append(measured)
    lv = np.array(lv)
    assert lv.min() >= -5 - 1e-3 and lv.max() <= 5 + 1e-3
    assert lv.min() < -4 and lv.max() > 4  # the whole range is used
    ds2 = _ds(banks, "env", level_range_db=(2.0, 2.0))
    s = ds2.example(0)["sources"].astype(np.float64)
    assert 10 * np.log10(s[0].var() / s[1].var()) == pytest.approx(2.0, abs=1e-3)


def test_normalize_mixture():
    rng = np.random.default_rng(0)
    crops = np.stack([rng.standard_normal(1000) * 5 + 3, rng.standard_normal(1000) * 0.01])
    mix, src = normalize_mixture(crops, -3.0)
    assert np.array_equal(mix, src[0] + src[1])
    assert abs(mix.mean()) < 1e-6 and abs(mix.std() - 1) < 1e-5
    assert 10 * np.log10(src[0].var() / src[1].var()) == pytest.approx(-3.0, abs=1e-4)
    mix, src = normalize_mixture(np.stack([crops[0], np.zeros(1000)]), 0.0)
    assert np.isfinite(src).all() and not src[1].any()  # silent slot stays zero


def _half_silent_bank(length, name):
    # Each source: noise, a long stretch of digital zeros (half the clip), noise.
    rng = np.random.default_rng(3)
    items = []
    for c in range(3):
        x = np.zeros(length, np.float32)
        q = length // 4
        x[:q] = rng.standard_normal(q) * 0.2
        x[3 * q:] = rng.standard_normal(length - 3 * q) * 0.2
        items.append(SourceItem(f"{name}{c}", f"c{c}", f"{name}{c}", "train", audio=x))
    return load_sources(SourceCatalog(items, name=name), progress=False)


def test_silent_crops_are_skipped():
    bank = _half_silent_bank(4 * T, "h")  # crops fully inside the silence exist
    ds = MixtureDataset(bank, "env", segment_len=T, seed=0, num_items=300)
    for i in range(300):
        s = ds.example(i)["sources"]
        assert (np.abs(s) > 0).any(axis=1).all(), f"item {i} has an all-silent source"
    # Control: with the check disabled the same data does give silent crops.
    off = MixtureDataset(bank, "env", segment_len=T, seed=0, num_items=300,
                         silence_rel=0.0, silence_abs=0.0)
    assert any(not (np.abs(off.example(i)["sources"]) > 0).any(axis=1).all() for i in range(300))


def test_env_task_two_classes(banks):
    ds = _ds(banks, "env", num_items=200)
    bank = banks["env"]
    assert ds.class_names == bank.classes
    for i in range(200):
        ex = ds.example(i)
        assert ex["labels"][0] != ex["labels"][1]
        assert ex["labels"].tolist() == bank.label_ids[ex["source_ids"]].tolist()


def test_speech_task_two_speakers_and_join(banks):
    bank = banks["speech"]
    ds = _ds(banks, "speech", num_items=200)
    assert ds.class_names == ("speech",)
    for i in range(200):
        ex = ds.example(i)
        g = bank.group_ids[ex["source_ids"]]
        assert g[0] != g[1] and ex["labels"].tolist() == [0, 0]

    # Joining: tag every clip with a constant that encodes its speaker, so the
    # joined signal must contain only that speaker's values.
    items = [SourceItem(f"s{s}_{j}", "speech", f"spk{s}", "train",
                        audio=np.full(300 + 50 * j, 0.1 * (s + 1) + 0.001 * j, np.float32))
             for s in range(3) for j in range(4)]
    tagged = load_sources(SourceCatalog(items, name="speech"), progress=False)
    ds2 = MixtureDataset(tagged, "speech", segment_len=T, seed=0, num_items=10)
    rng = np.random.default_rng(0)
    for i in range(len(tagged)):
        x, _ = ds2._signal(rng, tagged, i, "join")
        spk = tagged.group_ids[i]
        assert x.size >= T
        assert np.all(np.abs(np.floor(x / 0.1 + 1e-3) - (spk + 1)) < 0.5)


def test_short_source_pad_and_loop():
    items = [SourceItem(f"e{c}", f"c{c}", f"e{c}", "train",
                        audio=np.random.default_rng(c).standard_normal(400).astype(np.float32))
             for c in range(3)]
    bank = load_sources(SourceCatalog(items), progress=False)
    pad = MixtureDataset(bank, "env", segment_len=T, seed=0, num_items=5)
    rng = np.random.default_rng(0)
    x, _ = pad._signal(rng, bank, 0, "pad")
    assert x.size == T and np.count_nonzero(x) == 400
    loop = MixtureDataset(bank, "env", segment_len=T, seed=0, num_items=5, short_env="loop")
    x, _ = loop._signal(rng, bank, 0, "loop")
    assert x.size >= T and np.array_equal(x[400:800], x[:400])
    assert loop[0]["sources"].shape == (2, T)


def test_mixed_task_labels(banks):
    ds = _ds(banks, "mixed")
    assert ds.class_names == ("speech", "env") and ds.num_classes == 2
    ex = ds[0]
    assert ex["labels"].tolist() == [0, 1]
    bias = {"speech": 3.0, "env": 0.0}
    assert [bias[ds.class_names[c]] for c in ex["labels"].tolist()] == [3.0, 0.0]
    with pytest.raises(ValueError, match="mapping"):
        MixtureDataset(banks["env"], "mixed", segment_len=T)


def test_batching_sampler_and_bounds(banks):
    ds = _ds(banks, "env", num_items=None)
    assert len(ds) > 10**15  # unbounded training set
    b = collate([ds[i] for i in range(3)])
    assert b["mixture"].shape == (3, T) and b["sources"].shape == (3, 2, T)
    assert b["labels"].shape == (3, 2) and b["level_db"].shape == (3,)
    sampler = StepBatchSampler(4, start_step=2, num_steps=2)
    assert list(sampler) == [[8, 9, 10, 11], [12, 13, 14, 15]] and len(sampler) == 2
    loader = DataLoader(ds, batch_sampler=StepBatchSampler(4, start_step=2), collate_fn=collate)
    first = next(iter(loader))
    assert torch.equal(first["mixture"], ds.batch(range(8, 12))["mixture"])
    assert first["index"].tolist() == [8, 9, 10, 11]
    fixed = _ds(banks, "env", num_items=5)
    with pytest.raises(IndexError):
        fixed[5]
    with pytest.raises(IndexError):
        fixed[-1]


def test_task_validation(banks):
    with pytest.raises(ValueError, match="task"):
        MixtureDataset(banks, "music", segment_len=T)
    one_speaker = _speech_bank(n_speakers=1)
    with pytest.raises(ValueError, match="two speakers"):
        MixtureDataset(one_speaker, "speech", segment_len=T)
    with pytest.raises(ValueError, match="needs source banks"):
        MixtureDataset({"env": banks["env"]}, "mixed", segment_len=T)


# --------------------------------------------------------------------------- real data

def _need_real() -> Path:
    if not ((DATA_DIR / "esc50" / "meta.csv").is_file()
            and (DATA_DIR / "speech" / "meta.csv").is_file()):
        pytest.skip(f"real audio not found at {DATA_DIR} (set UGR_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="module")
def real_banks():
    d = _need_real()
    esc = esc50_catalog(d).split("train").sample(40, seed=0)
    sp = speech_catalog(d).split("val")
    sp = sp.filter(lambda it: it.group in set(sp.groups[:4]))  # 4 speakers, ~100 clips
    return {"env": load_sources(esc, progress=False), "speech": load_sources(sp, progress=False)}


def test_real_env_and_speech_mixtures(real_banks):
    env = MixtureDataset(real_banks, "env", seed=0, num_items=20)
    assert len(env.class_names) == 50
    for i in range(20):
        ex = env.example(i)
        assert ex["labels"][0] != ex["labels"][1]
        assert ex["mixture"].shape == (32000,)
        assert np.array_equal(ex["mixture"], ex["sources"][0] + ex["sources"][1])
    sp = MixtureDataset(real_banks, "speech", seed=0, num_items=20)
    bank = real_banks["speech"]
    for i in range(20):
        ex = sp.example(i)
        assert bank.group_ids[ex["source_ids"][0]] != bank.group_ids[ex["source_ids"][1]]
        assert (np.abs(ex["sources"]) > 0).any(axis=1).all()
    mixed = MixtureDataset(real_banks, "mixed", seed=0, num_items=4)
    assert mixed.batch(range(4))["labels"].tolist() == [[0, 1]] * 4
