"""python -m train.evaluate (train.commands.evaluate): reproduces a run's final test
without training, evaluates on other data (a CSV of real files), and fails clearly on bad
input. Also: the training run folder gets its pictures."""
import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from train import evaluate as E
from train.commands.train import parse_args
from train.run.trainer import Trainer
from train.run_folder import load_trained

QUICK = ["--model", "sudormrf-tiny", "--segment-seconds", "0.25", "--batch-size", "4",
         "--val-items", "4", "--test-items", "6", "--eval-batch-size", "4", "--eval-every", "3",
         "--no-progress", "--threads", "1", "--fused"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "quick"
    Trainer(parse_args(QUICK + ["--steps", "6", "--run-dir", str(run)])).run()
    return run


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_default_evaluation_reproduces_the_runs_final_test(run_dir, capsys):
    out = E.main([str(run_dir), "--no-progress", "--threads", "1", "--batch-size", "3"])
    text = capsys.readouterr().out
    assert "test SI-SDRi (dB)" in text and "per class" in text
    ev = run_dir / "eval-synthetic-env-test"
    trained = json.loads((run_dir / "results.json").read_text())
    again = json.loads((ev / "results.json").read_text())
    assert again == out and again["items"] == trained["items"] == 12
    for key in trained["test"]:
        assert again["test"][key] == pytest.approx(trained["test"][key], abs=1e-4), key
    assert again["per_class"].keys() == trained["per_class"].keys()
    a, b = rows(run_dir / "test_sisdri.csv"), rows(ev / "test_sisdri.csv")
    assert [(r["example"], r["class"]) for r in a] == [(r["example"], r["class"]) for r in b]
    assert [float(r["sisdri"]) for r in a] == pytest.approx([float(r["sisdri"]) for r in b],
                                                             abs=1e-3)


def test_options_change_the_test_set(run_dir, tmp_path):
    out = E.main([str(run_dir / "checkpoint.pt"), "--no-progress", "--items", "3",
                  "--segment-seconds", "0.5", "--task", "speech", "--split", "val",
                  "--out-dir", str(tmp_path / "ev")])
    assert out["items"] == 6 and out["task"] == "speech" and out["split"] == "val"
    assert list(out["per_class"]) == ["speech"]
    assert (tmp_path / "ev" / "test_sisdri.csv").exists()


def test_training_run_folder_has_its_pictures(run_dir):
    if not importlib.util.find_spec("matplotlib"):
        pytest.skip("matplotlib is not installed: the trainer draws nothing")
    for name in ("val_curve.png", "test_sisdri_hist.png"):
        assert (run_dir / name).stat().st_size > 10_000, name


def test_load_trained_gives_the_trained_weights(run_dir):
    model, args = load_trained(run_dir)
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert args["model"] == "sudormrf-tiny" and args["checkpoint_step"] == 6
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k
    assert not model.training


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/nothing"], "no checkpoint at"),
    (["{run}", "--data-dir", "{tmp}/missing"], "data directory not found"),
    (["{run}", "--data-dir", "{tmp}", "--data-csv", "x.csv"], "at most one of"),
    (["{run}", "--data-csv", "{tmp}/none.csv"], "not found"),
    (["{run}", "--items", "0"], "positive integer"),
    (["{bad}"], "unreadable"),
])
def test_bad_input_exits_2_with_a_message(run_dir, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    argv = [a.format(tmp=tmp_path, run=run_dir, bad=bad) for a in argv]
    with pytest.raises(SystemExit) as exc:
        E.main(argv + ["--no-progress"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_evaluates_on_a_csv_of_real_recordings(run_dir, data_dir, tmp_path):
    """A model trained on synthetic sounds, evaluated on real ESC-50 files listed in a CSV
    without a split column (--split all)."""
    meta = rows(data_dir / "esc50" / "meta.csv")
    chosen = [r for r in meta if r["category"] in ("dog", "rain", "church_bells")][:30]
    listing = tmp_path / "mine.csv"
    with open(listing, "w") as f:
        f.write("filename,label\n")
        for r in chosen:
            f.write(f"{Path(data_dir) / 'esc50' / r['filename']},{r['category']}\n")
    out = E.main([str(run_dir), "--data-csv", str(listing), "--split", "all", "--items", "5",
                  "--no-progress"])
    ev = run_dir / "eval-mine-env-all"
    assert out["items"] == 10 and out["data"] == str(listing)
    assert set(out["per_class"]) <= {"dog", "rain", "church_bells"}
    assert {r["class"] for r in rows(ev / "test_sisdri.csv")} == set(out["per_class"])
