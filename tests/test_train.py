"""The trainer: CLI, a default run, exact resume, DDP equivalence, real audio, bad input."""
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train.cli import parse_args
from train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--model", "sudormrf-tiny", "--segment-seconds", "0.25", "--batch-size", "4",
         "--val-items", "4", "--test-items", "4", "--eval-batch-size", "4",
         "--no-progress", "--threads", "1", "--fused"]


def run(tmp_path, *extra, name="run"):
    args = parse_args(QUICK + ["--run-dir", str(tmp_path / name)] + list(extra))
    return Trainer(args), args


def params(path):
    return torch.load(path, weights_only=False)["model"]


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "positive integer"),
    (["--weighting", "robustish"], "unknown weighting"),
    (["--weighting", "class"], "needs --gamma"),
    (["--gamma", "speech"], "CLASS=GAMMA"),
    (["--model", "resnet"], "invalid choice"),
    # non-finite or out-of-range numbers are rejected by the parser, naming the flag
    (["--weighting", "robust", "--alpha", "nan"], "argument --alpha"),
    (["--weighting", "robust", "--alpha", "inf"], "argument --alpha"),
    (["--weighting", "curriculum", "--beta-start", "nan"], "argument --beta-start"),
    (["--beta-end", "-inf"], "argument --beta-end"),
    (["--lr", "nan"], "argument --lr"),
    (["--lr", "0"], "argument --lr"),
    (["--segment-seconds", "nan"], "argument --segment-seconds"),
    (["--segment-seconds", "0.0001"], "argument --segment-seconds"),
    (["--clip-grad", "nan"], "argument --clip-grad"),
    (["--clamp-db", "nan"], "argument --clamp-db"),
    (["--clamp-db", "-10"], "argument --clamp-db"),
    (["--lr-decay-factor", "inf"], "argument --lr-decay-factor"),
    (["--gamma", "speech=nan"], "argument --gamma"),
    (["--num-workers", "-1"], "argument --num-workers"),
    (["--cuda-graphs"], "--cuda-graphs needs --compile"),
])
def test_bad_flags_give_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_every_float_flag_rejects_nan():
    from train.cli import build_parser

    floats = [a for a in build_parser()._actions
              if a.option_strings and a.type is not None and a.default.__class__ is float]
    assert {a.option_strings[0] for a in floats} >= {"--alpha", "--lr", "--clip-grad",
                                                     "--segment-seconds", "--beta-start"}
    for action in floats:
        with pytest.raises(SystemExit):
            parse_args([action.option_strings[0], "nan"])


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--fused", "--weighting", "--alpha", "--gamma", "--resume", "--data-dir",
                 "--granularity", "--beta-schedule", "--clip-grad"):
        assert flag in out
    assert "synthetic" in out


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
    train_a = [json.loads(line) for line in text_a.splitlines()
               if '"train"' in line]
    text_b = (tmp_path / "b" / "metrics.jsonl").read_text()
    train_b = [json.loads(line) for line in text_b.splitlines()
               if '"train"' in line]
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


def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path):
    from train.metrics import MetricsLog

    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"kind": "val", "step": 1, "mean": float("nan"), "p": [float("inf"), 1.0]})
    text = (tmp_path / "m.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"kind": "val", "step": 1, "mean": None, "p": [None, 1.0]}


@pytest.mark.parametrize("damage", ["checkpoint", "csv"])
def test_bad_files_print_the_message_without_a_traceback(tmp_path, damage):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if damage == "checkpoint":
        (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
        extra, needle = ["--resume"], "checkpoint.pt"
    else:
        (tmp_path / "meta.csv").write_text("filename,label\n")
        extra, needle = ["--data-csv", str(tmp_path / "meta.csv")], "meta.csv"
    cmd = [sys.executable, "-m", "train", *QUICK, "--steps", "1", "--run-dir", str(run_dir), *extra]
    env = dict(os.environ, UGR_DEBUG="")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]
    debug = subprocess.run(cmd + ["--debug"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


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
    step_fn = trainer.train_step_fn
    real_forward = step_fn.forward
    calls = {"n": 0}

    def sometimes_nan(mix):
        calls["n"] += 1
        out = real_forward(mix)
        return out * float("nan") if calls["n"] == 2 else out

    step_fn.forward = sometimes_nan
    trainer.run()
    assert trainer.non_finite_steps == 1
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    last = [r for r in map(json.loads, text.splitlines())
            if r["kind"] == "train"][-1]
    assert last["non_finite_steps"] == 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_on_the_combined_batch(tmp_path):
    common = QUICK + ["--steps", "3", "--eval-every", "0", "--no-test",
                      "--weighting", "robust", "--alpha", "0.3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "train", *common, "--run-dir", str(tmp_path / "one")],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", "-m", "train", *common,
                           "--run-dir", str(tmp_path / "two")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = params(tmp_path / "one" / "checkpoint.pt")
    two = params(tmp_path / "two" / "checkpoint.pt")
    # decoder.bias adds a DC offset, to which zero-mean SI-SDR is blind: its true gradient
    # is exactly 0, and Adam normalises the rounding noise left in it into +-lr steps that
    # differ with any change of summation order. Every other parameter must agree to
    # 1e-5 (Adam steps are ~1e-3): one process holds the whole batch, each rank half, so
    # the per-item loss gradients reach est through differently rounded float32 factors
    # (the fused op's loss vs its sisdr output under the rank split), a ~1e-7 relative
    # difference that Adam's normalisation lifts to ~3e-6 in a few weights.
    for k in one:
        if k != "decoder.bias":
            torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5, msg=k)
    moved = params(tmp_path / "one" / "checkpoint.pt")
    assert any(not torch.equal(moved[k], torch.zeros_like(moved[k])) for k in moved)


@pytest.mark.data
def test_short_training_on_real_audio_lowers_the_loss(tmp_path, data_dir):
    trainer, _ = run(tmp_path, "--data-dir", str(data_dir), "--task", "env", "--steps", "30",
                     "--segment-seconds", "0.5", "--eval-every", "0", "--log-every", "10",
                     "--no-test", "--lr", "3e-3")
    trainer.run()
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()
             if '"train"' in line]
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


def test_reproduce_robust_sweep_writes_summary_and_plots(tmp_path):
    from train import reproduce

    reproduce.main(["robust", "--data-dir", "", "--model", "sudormrf-tiny", "--segment", "0.25",
                    "--batch", "4", "--steps", "2", "--eval-every", "1", "--val-items", "4",
                    "--test-items", "4", "--threads", "1", "--no-progress",
                    "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "robust" / "summary.json").read_text())
    assert [r["alpha"] for r in summary["rows"]] == ["0", "1/15", "1/10", "1/5"]
    assert summary["settings"]["steps"] == 2
    assert all(math.isfinite(r["mean"]) for r in summary["rows"])
    assert (tmp_path / "out" / "robust" / "summary.csv").exists()
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "out" / "robust" / "sisdri_hist.png").exists()
