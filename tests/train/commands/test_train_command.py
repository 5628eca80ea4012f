"""``python -m train``'s command line (train.commands.train): flags checked and named, the
one failure convention, and ``--config`` (a run's own config.json re-runs it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.commands.train import build_parser, main, parse_args
from train.run.config import RunConfig

ROOT = Path(__file__).resolve().parents[3]
QUICK = ["--model", "sudormrf-tiny", "--segment-seconds", "0.25", "--batch-size", "4",
         "--val-items", "4", "--test-items", "4", "--eval-batch-size", "4",
         "--no-progress", "--threads", "1", "--fused"]


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
    assert proc.returncode == 2      # the one exit code of a bad flag or file (was 1 here)
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    debug = subprocess.run(cmd + ["--debug"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_defaults_live_in_run_config():
    parser = build_parser()
    defaults = RunConfig()
    for action in parser._actions:
        if action.dest in RunConfig.option_names():
            assert action.default == getattr(defaults, action.dest) or (
                action.dest == "weighting" and tuple(action.default) == defaults.weighting), \
                action.dest
    assert parse_args([]) == RunConfig()


def test_a_runs_config_json_runs_it_again(tmp_path, capsys):
    first = tmp_path / "first"
    main(QUICK + ["--steps", "2", "--eval-every", "1", "--weighting", "robust+class",
                  "--gamma", "noise=1.5", "--run-dir", str(first)])
    again = tmp_path / "again"
    main(["--config", str(first / "config.json"), "--run-dir", str(again)])
    a = json.loads((first / "config.json").read_text())
    b = json.loads((again / "config.json").read_text())
    assert a.pop("run_dir") == str(first) and b.pop("run_dir") == str(again)
    assert a == b and a["weighting"] == ["robust", "class"] and a["gamma"] == {"noise": 1.5}
    ra = json.loads((first / "results.json").read_text())
    rb = json.loads((again / "results.json").read_text())
    assert ra["test"] == rb["test"]                     # the same run, step for step
    wa = torch.load(first / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(again / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"steps": 7, "lr": 0.01, "weighting": ["robust"], "alpha": 0.3,
                                "task": "speech", "fused": True}))
    config = parse_args(["--config", str(path), "--lr", "0.002", "--run-dir", "x"])
    assert (config.steps, config.lr, config.weighting, config.alpha, config.task,
            config.fused) == (7, 0.002, ("robust",), 0.3, "speech", True)
    assert config.batch_size == RunConfig().batch_size


def test_a_yaml_config_is_read_when_pyyaml_is_installed(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "c.yaml"
    path.write_text("steps: 9\ngamma: {speech: 3, env: 0}\nweighting: [class]\ntask: mixed\n")
    config = parse_args(["--config", str(path)])
    assert (config.steps, config.gamma, config.task) == (9, {"speech": 3.0, "env": 0.0}, "mixed")


@pytest.mark.parametrize("content, message", [
    ('{"stepz": 3}', "unknown option 'stepz'"),
    ('{"lr": -1}', "lr (--lr): expected a positive finite number"),
    ('{"steps": 2.5}', "steps (--steps): expected a positive integer"),
    ('{"task": "music"}', "task (--task): invalid choice 'music'"),
    ('{"fused": "yes"}', "fused (--fused): expected true or false"),
    ('{"weighting": ["robustish"]}', "unknown weighting"),
    ('{"run_dir": null}', "run_dir (--run-dir): expected a value"),
    ('[1, 2]', "expected a mapping"),
    ('{"steps": ', "is not valid JSON"),
])
def test_a_bad_config_file_is_one_line_naming_file_and_option(tmp_path, capsys, content,
                                                               message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--config", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and str(path) in err, err
    assert err.count("\n") == 1


def test_a_missing_config_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--config", str(tmp_path / "none.json")])
    assert exc.value.code == 2 and "config file not found" in capsys.readouterr().err


def test_a_config_json_does_not_overwrite_its_own_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"run_dir": str(run_dir)}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(run_dir / "config.json")])
    assert "give a new --run-dir" in capsys.readouterr().err


def test_every_command_fails_the_same_way(tmp_path):
    """One line naming the bad flag or file, exit code 2, for every command line."""
    env = dict(os.environ, UGR_DEBUG="")
    cases = [(["train", "--lr", "nan"], "argument --lr"),
             (["train.evaluate", str(tmp_path / "none")], "no checkpoint at"),
             (["train.separate", str(tmp_path / "none"), str(tmp_path / "x.wav"), "--out-dir",
               str(tmp_path / "o")], "x.wav"),
             (["train.report", str(tmp_path / "none")], "not a run folder"),
             (["train.reproduce", "robust", "--steps", "0"], "argument --steps")]
    for argv, needle in cases:
        proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                              text=True, env=env)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.startswith("error: ") and needle in proc.stderr, (argv, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
