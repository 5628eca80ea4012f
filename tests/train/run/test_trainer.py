"""The trainer (train.run.trainer): a default run, exact resume, Ctrl-C, skipped steps,
real audio, bad input. (Its command line: tests/train/commands; DDP: test_distributed.)"""
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train.commands.train import parse_args
from train.run.trainer import Trainer

ROOT = Path(__file__).resolve().parents[3]
QUICK = ["--model", "sudormrf-tiny", "--segment-seconds", "0.25", "--batch-size", "4",
         "--val-items", "4", "--test-items", "4", "--eval-batch-size", "4",
         "--no-progress", "--threads", "1", "--fused"]


def run(tmp_path, *extra, name="run"):
    args = parse_args(QUICK + ["--run-dir", str(tmp_path / name)] + list(extra))
    return Trainer(args), args


def params(path):
    return torch.load(path, weights_only=False)["model"]


def test_default_synthetic_run_writes_metrics_and_results(tmp_path):
    trainer, _ = run(tmp_path, "--steps", "6", "--eval-every", "3", "--log-every", "2",
                     "--weighting", "robust", "--alpha", "0.2")
    out = trainer.run()
    run_dir = tmp_path / "run"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [2, 4, 6]
    assert [r["step"] for r in lines if r["kind"] == "val"] == [3, 6]
    assert all(r["alpha"] == 0.2 for r in lines if r["kind"] == "train")
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "test_sisdri.csv").exists()
    res = json.loads((run_dir / "results.json").read_text())
    assert set(res["test"]) >= {"mean", "std", "p1", "p50", "p99"}
    assert out["items"] == res["items"] > 0

    from train import report
    report.main([str(run_dir), "--out", str(tmp_path / "plots")])
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "plots" / "sisdri_hist.png").stat().st_size > 1000
        assert (tmp_path / "plots" / "val_curves.png").exists()


def test_resume_continues_exactly(tmp_path):
    straight, _ = run(tmp_path, "--steps", "6", "--eval-every", "0", "--no-test",
                      "--log-every", "3", name="a")
    straight.run()
    first, _ = run(tmp_path, "--steps", "3", "--eval-every", "0", "--no-test",
                   "--log-every", "3", name="b")
    first.run()
    resumed, _ = run(tmp_path, "--steps", "6", "--eval-every", "0", "--no-test", "--resume",
                     "--log-every", "3", name="b")
    resumed.run()
    a, b = params(tmp_path / "a" / "checkpoint.pt"), params(tmp_path / "b" / "checkpoint.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    text_a = (tmp_path / "a" / "metrics.jsonl").read_text()
    train_a = [r for r in map(json.loads, text_a.splitlines()) if r["kind"] == "train"]
    text_b = (tmp_path / "b" / "metrics.jsonl").read_text()
    train_b = [r for r in map(json.loads, text_b.splitlines()) if r["kind"] == "train"]
    assert [r["loss"] for r in train_a] == [r["loss"] for r in train_b]


def test_resume_after_a_crash_drops_metrics_logged_after_the_checkpoint(tmp_path):
    first, _ = run(tmp_path, "--steps", "4", "--eval-every", "0", "--no-test", "--log-every", "1",
                   "--checkpoint-every", "2", name="crash")
    first.run()
    metrics = tmp_path / "crash" / "metrics.jsonl"
    # A crash after step 6 left lines 5, 6 behind a checkpoint of step 4; the last cut short.
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines + [lines[-1].replace('"step": 4', '"step": 5'),
                                         lines[-1].replace('"step": 4', '"step": 6')[:20]]) + "\n")
    resumed, _ = run(tmp_path, "--steps", "6", "--eval-every", "0", "--no-test", "--resume",
                     "--log-every", "1", name="crash")
    resumed.run()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path):
    run_dir = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "train", *QUICK, "--steps", "100000", "--eval-every", "0",
           "--log-every", "1", "--checkpoint-every", "0", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved" in out
    step = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    assert step >= 2
    resumed, _ = run(tmp_path, "--steps", str(step + 1), "--eval-every", "0", "--no-test",
                     "--resume", name="interrupted")
    resumed.run()
    assert resumed.step == step + 1


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    trainer, _ = run(tmp_path, "--steps", "2", "--resume", name="missing")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        trainer.run()


def test_non_finite_loss_skips_the_step_and_is_counted(tmp_path, monkeypatch):
    trainer, _ = run(tmp_path, "--steps", "4", "--eval-every", "0", "--no-test")
    step = trainer.device_step
    real_model = step.model
    calls = {"n": 0}

    def sometimes_nan(mix):
        calls["n"] += 1
        out = real_model(mix)
        return out * float("nan") if calls["n"] == 2 else out

    step.model = sometimes_nan
    trainer.run()
    assert trainer.non_finite_steps == 1
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    last = [r for r in map(json.loads, text.splitlines())
            if r["kind"] == "train"][-1]
    assert last["non_finite_steps"] == 1


@pytest.mark.data
def test_short_training_on_real_audio_lowers_the_loss(tmp_path, data_dir):
    trainer, _ = run(tmp_path, "--data-dir", str(data_dir), "--task", "env", "--steps", "30",
                     "--segment-seconds", "0.5", "--eval-every", "0", "--log-every", "10",
                     "--no-test", "--lr", "3e-3")
    trainer.run()
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    # (by kind: ESC-50 has a class named "train", listed in the setup line)
    lines = [r for r in map(json.loads, text.splitlines()) if r["kind"] == "train"]
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_missing_audio_file_stops_before_training_and_names_it(tmp_path):
    import numpy as np
    import soundfile as sf

    folder = tmp_path / "mine"
    folder.mkdir()
    rows = ["filename,label,split"]
    for i in range(6):
        for split in ("train", "val", "test"):
            name = f"{split}_{i}.flac"
            sf.write(folder / name, np.random.default_rng(i).normal(size=4000) * 0.1, 8000)
            rows.append(f"{name},{'ab'[i % 2]},{split}")
    rows.append("gone.flac,a,train")
    (folder / "meta.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(Exception, match="gone.flac"):
        run(tmp_path, "--data-csv", str(folder / "meta.csv"), "--steps", "2")


