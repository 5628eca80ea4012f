"""The road from options to datasets (train.data.loader): one catalogue selection, the
splits, evaluation sets, label checks and the training loader."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from train.data.loader import (
    build_data,
    build_splits,
    catalogs_for,
    eval_batches,
    evaluation_set,
    train_loader,
)
from train.data.synthetic import synthetic_catalog

T = 1600


def test_build_splits_synthetic():
    small = dict(num_speakers=6, clips_per_speaker=2, env_per_class=3,
                 speech_seconds=0.5, env_seconds=0.5)
    kw = dict(segment_len=T, num_val=4, num_test=4, progress=False)
    catalogs = synthetic_catalog(**small)
    a = build_splits("mixed", catalogs, seed=1, **kw)
    b = build_splits("mixed", catalogs, seed=2, **kw)
    assert a.class_names == ("speech", "env") and len(a.val) == 4
    # val/test do not depend on the training seed; train does
    assert torch.equal(a.val[3]["mixture"], b.val[3]["mixture"])
    assert torch.equal(a.test[0]["sources"], b.test[0]["sources"])
    assert not torch.equal(a.train[0]["mixture"], b.train[0]["mixture"])
    # splits use disjoint speakers
    assert not set(a.train.banks["speech"].group_names) & set(a.test.banks["speech"].group_names)
    for task in ("env", "speech"):
        d = build_splits(task, catalogs, **kw)
        assert d.train[0]["mixture"].shape == (T,)


def _csv(tmp_path, splits=("train", "val", "test")):
    rows = ["filename,label,split"]
    for i in range(4):
        for split in splits:
            name = f"{split}_{i}.flac"
            sf.write(tmp_path / name, np.random.default_rng(i).normal(size=2000) * 0.1, 8000)
            rows.append(f"{name},{'ab'[i % 2]},{split}")
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "mine.csv"


def test_catalogs_for_is_the_one_selection(tmp_path):
    csv_path = _csv(tmp_path)
    cats, name = catalogs_for("speech", data_csv=csv_path)
    assert list(cats) == ["speech"] and name == "mine" and len(cats["speech"]) == 12
    cats, _ = catalogs_for("env", data_csv=csv_path)
    assert list(cats) == ["env"]
    with pytest.raises(ValueError, match="--task mixed needs --data-dir"):
        catalogs_for("mixed", data_csv=csv_path)
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        catalogs_for("env", data_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="task must be one of"):
        catalogs_for("music")


def test_catalogs_for_reads_only_what_the_task_needs(data_dir):
    cats, name = catalogs_for("speech", data_dir=data_dir)
    assert list(cats) == ["speech"] and name == data_dir.name
    cats, _ = catalogs_for("mixed", data_dir=data_dir)
    assert sorted(cats) == ["env", "speech"]


def test_build_data_from_a_run_config_and_evaluation_sets(tmp_path):
    config = SimpleNamespace(task="env", data_dir=None, data_csv=_csv(tmp_path), segment_len=T,
                             seed=0, val_items=3, test_items=5)
    data = build_data(config, show=False)
    assert data.class_names == ("a", "b") and len(data.val) == 3 and len(data.test) == 5
    cats, _ = catalogs_for("env", data_csv=config.data_csv)
    again = evaluation_set("env", cats, "test", T, 5, progress=False)
    assert torch.equal(again[4]["mixture"], data.test[4]["mixture"])   # the run's own test set
    everything = evaluation_set("env", cats, "all", T, 2, progress=False)
    assert sum(len(b) for b in everything.banks.values()) == 12
    batches = list(eval_batches(data.test, 2))
    assert [b["mixture"].shape[0] for b in batches] == [2, 2, 1]


def test_a_split_without_items_is_named(tmp_path):
    cats, _ = catalogs_for("env", data_csv=_csv(tmp_path, splits=("train", "test")))
    with pytest.raises(ValueError, match="no 'val' items"):
        build_splits("env", cats, T, num_val=2, num_test=2, progress=False)


def test_train_loader_gives_each_rank_its_slice_of_fresh_indices():
    data = build_splits("env", synthetic_catalog(num_speakers=2, clips_per_speaker=2,
                                                  env_per_class=3, speech_seconds=0.5,
                                                  env_seconds=0.5), T,
                        num_val=1, num_test=1, progress=False)
    config = SimpleNamespace(batch_size=4, steps=3, num_workers=0)
    ranks = [list(train_loader(data, config, 1, r, 2, pin=False)) for r in (0, 1)]
    assert [b["index"].tolist() for b in ranks[0]] == [[4, 5], [8, 9]]
    assert [b["index"].tolist() for b in ranks[1]] == [[6, 7], [10, 11]]
