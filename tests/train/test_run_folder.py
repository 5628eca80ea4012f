"""The run folder (train.run_folder): its files, written and read back in one place."""
import json

import numpy as np
import pytest
import torch

from model import build_model
from train.run_folder import (
    MetricsLog,
    RunFolder,
    RunFolderError,
    load_checkpoint,
    load_trained,
    read_config_file,
    save_checkpoint,
)


def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"kind": "val", "step": 1, "mean": float("nan"), "p": [float("inf"), 1.0]})
    text = (tmp_path / "m.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"kind": "val", "step": 1, "mean": None, "p": [None, 1.0]}


def test_paths_are_the_run_folders_file_names(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert [p.name for p in (folder.config_json, folder.checkpoint, folder.metrics,
                             folder.results_json, folder.items_csv)] == \
        ["config.json", "checkpoint.pt", "metrics.jsonl", "results.json", "test_sisdri.csv"]
    assert folder.read_results() is None and folder.read_test_items() is None
    assert folder.read_metrics() == []


def test_config_round_trip_and_files(tmp_path):
    folder = RunFolder(tmp_path / "run").create()
    folder.write_config({"steps": 3, "weighting": ("robust",), "clamp_db": None})
    assert folder.read_config() == {"steps": 3, "weighting": ["robust"], "clamp_db": None}
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_config_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RunFolderError, match="bad.json is not valid JSON"):
        read_config_file(tmp_path / "bad.json")


def test_results_and_items_round_trip(tmp_path):
    folder = RunFolder(tmp_path / "r")
    items = {"example": np.array([0, 0, 1]), "labels": np.array([1, 0, 1]),
             "sisdr": np.array([1.0, 2.0, 3.0]), "sisdri": np.array([0.5, float("nan"), 2.5])}
    folder.write_results({"test": {"mean": float("nan")}, "items": 3}, items, ["a", "b"])
    assert folder.read_results() == {"test": {"mean": None}, "items": 3}   # strict JSON
    back = folder.read_test_items()
    assert back["classes"].tolist() == ["b", "a", "b"]
    np.testing.assert_array_equal(back["sisdri"], [0.5, np.nan, 2.5])


def test_checkpoints_are_atomic_and_damage_is_named(tmp_path):
    path = save_checkpoint({"step": 3}, tmp_path / "c" / "checkpoint.pt")
    assert load_checkpoint(path) == {"step": 3}
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]   # no temporary left
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(RunFolderError, match="bad.pt is unreadable"):
        load_checkpoint(tmp_path / "bad.pt")


def test_load_trained_rejects_foreign_files_naming_them(tmp_path):
    save_checkpoint({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(RunFolderError, match="foreign.pt is not a checkpoint written by"):
        load_trained(tmp_path / "foreign.pt")
    net = build_model("sudormrf-tiny", num_sources=2)
    save_checkpoint({"model": net.state_dict(), "args": {"model": "sudormrf-0.25x"}},
                    tmp_path / "wrong.pt")
    with pytest.raises(RunFolderError, match="weights do not fit model 'sudormrf-0.25x'"):
        load_trained(tmp_path / "wrong.pt")
    save_checkpoint({"model": net.state_dict(), "args": {"model": "sudormrf-tiny"}, "step": 4},
                    tmp_path / "run" / "checkpoint.pt")
    model, args = load_trained(tmp_path / "run")
    assert args["checkpoint_step"] == 4 and not model.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.state_dict().items())


def test_metrics_truncate_keeps_the_lines_up_to_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in (1, 2, 3):
        log.write({"kind": "train", "step": step})
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"kind": "tr')                      # cut short by a crash
    log.truncate(2)
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    MetricsLog(tmp_path / "m.jsonl", enabled=False).clear()   # another rank: touches nothing
    assert (tmp_path / "m.jsonl").exists()
