"""End to end on real audio: S = 3 and 4 sources mixed online, a 3-source model on a
LibriMix-format manifest and a 2-source model on a wsj0-2mix folder (train a few steps,
evaluate, separate), and the one-line errors of the pre-mixed flags."""
import json

import numpy as np
import pytest
import soundfile as sf

from tests.train.conftest import write_premixed
from train.commands.evaluate import main as evaluate_main
from train.commands.separate import main as separate_main
from train.commands.train import main as train_main
from train.commands.train import parse_args

TINY = ["--model", "sudormrf-tiny", "--steps", "2", "--batch-size", "2",
        "--segment-seconds", "0.5", "--val-items", "3", "--test-items", "3",
        "--eval-batch-size", "4", "--eval-every", "0", "--no-progress", "--threads", "1"]


def _separate_and_check(run, tmp_path, S):
    audio = tmp_path / "in.wav"
    sf.write(audio, np.random.default_rng(0).standard_normal(12000).astype(np.float32) * 0.1,
             8000)
    written = separate_main([str(run), str(audio), "--out-dir", str(tmp_path / "sep"),
                             "--no-progress", "--threads", "1"])
    assert [p.name for p in written] == [f"in_s{k}.wav" for k in range(1, S + 1)]


@pytest.mark.parametrize("S", [3, 4])
def test_online_mixing_of_s_sources(S, data_dir, tmp_path):
    run = tmp_path / "run"
    results = train_main(["--data-dir", str(data_dir), "--task", "env", "--num-sources", str(S),
                          "--run-dir", str(run), *TINY])
    config = json.loads((run / "config.json").read_text())
    assert config["num_sources"] == S
    assert results["items"] == 3 * S                    # one row per (mixture, source)
    assert sum(r["count"] for r in results["per_class"].values()) == 3 * S
    ev = evaluate_main([str(run), "--items", "2", "--no-progress", "--threads", "1"])
    assert ev["items"] == 2 * S and ev["num_sources"] == S
    _separate_and_check(run, tmp_path, S)
    # config.json re-runs the run (num_sources recorded)
    again = tmp_path / "again"
    parse_args(["--config", str(run / "config.json"), "--run-dir", str(again)])


def test_three_sources_from_a_librimix_manifest(data_dir, tmp_path):
    root = write_premixed(tmp_path / "libri", data_dir, 3, rows=4, noise=True)
    run = tmp_path / "run"
    results = train_main(["--train-manifest", str(root / "tr.csv"),
                          "--val-manifest", str(root / "cv.csv"),
                          "--test-manifest", str(root / "tt.csv"), "--run-dir", str(run), *TINY])
    assert json.loads((run / "config.json").read_text())["num_sources"] == 3
    assert results["items"] == 3 * 3 and set(results["per_class"]) == {"source"}
    ev = evaluate_main([str(run), "--test-manifest", str(root / "cv.csv"), "--items", "10",
                        "--no-progress", "--threads", "1"])
    assert ev["items"] == 4 * 3 and ev["segment_seconds"] is None   # every row, whole
    _separate_and_check(run, tmp_path, 3)
    # the noise kept as a fourth source; the model of 3 sources does not take it
    with pytest.raises(SystemExit) as exc:
        evaluate_main([str(run), "--test-manifest", str(root / "cv.csv"), "--keep-noise",
                       "--no-progress"])
    assert exc.value.code == 2


def test_two_sources_from_a_wsj0_2mix_folder(data_dir, tmp_path):
    root = write_premixed(tmp_path / "wsj0-2mix", data_dir, 2, rows=3)
    run = tmp_path / "run"
    results = train_main(["--wsj0-mix-dir", str(root), "--run-dir", str(run), *TINY])
    assert results["items"] == 3 * 2
    ev = evaluate_main([str(run), "--no-progress", "--threads", "1"])   # the run's own tt/
    assert ev["items"] == 3 * 2 and ev["split"] == "test"
    ev = evaluate_main([str(run), "--wsj0-mix-dir", str(root), "--split", "val",
                        "--no-progress", "--threads", "1"])
    assert ev["split"] == "val"
    _separate_and_check(run, tmp_path, 2)


@pytest.mark.parametrize("argv, message", [
    (["--train-manifest", "a.csv"], "--val-manifest is needed with --train-manifest"),
    (["--train-manifest", "a.csv", "--val-manifest", "b.csv"], "--test-manifest is needed"),
    (["--keep-noise"], "--keep-noise applies to pre-mixed data"),
    (["--wsj0-mix-dir", "d", "--data-dir", "x"], "replaces --data-dir"),
    (["--wsj0-mix-dir", "d", "--train-manifest", "a.csv"], "not both"),
    (["--num-sources", "9"], "argument --num-sources"),
    (["--num-sources", "0"], "argument --num-sources"),
])
def test_bad_premixed_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_data_errors_are_one_line(data_dir, tmp_path, capsys):
    root = write_premixed(tmp_path / "d", data_dir, 3, rows=2)
    gone = root / "cv" / "s3" / "cv_001.wav"
    kept = gone.read_bytes()
    gone.unlink()
    base = ["--train-manifest", str(root / "tr.csv"), "--val-manifest", str(root / "cv.csv"),
            "--test-manifest", str(root / "tt.csv"), "--run-dir", str(tmp_path / "r"), *TINY]
    with pytest.raises(SystemExit) as exc:
        train_main(base)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cv.csv row 2" in err and "cv_001.wav" in err
    gone.write_bytes(kept)
    with pytest.raises(SystemExit):
        train_main(["--wsj0-mix-dir", str(root), "--num-sources", "2", *base[6:]])
    err = capsys.readouterr().err
    assert "--num-sources 2, but the pre-mixed data" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        train_main(["--data-dir", str(data_dir), "--task", "mixed", "--num-sources", "3",
                    *base[6:]])
    assert "task 'mixed'" in capsys.readouterr().err
