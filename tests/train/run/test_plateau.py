"""Best model, plateau learning rate and early stopping (train.run.plateau and the trainer):
the rule is torch's ReduceLROnPlateau, best.pt is the best validation's model, the final
test scores it (or the last one with --test-on last), and a resume continues all of it
exactly."""
import json

import pytest
import torch

from train.commands.train import parse_args
from train.run.config import RunConfig
from train.run.plateau import ValidationControl
from train.run.trainer import Trainer

QUICK = ["--model", "sudormrf-tiny", "--segment-seconds", "0.25", "--batch-size", "4",
         "--val-items", "4", "--test-items", "4", "--eval-batch-size", "4",
         "--no-progress", "--threads", "1", "--fused", "--num-workers", "0"]

VALUES = [1.0, 2.0, 2.0, 1.5, 1.9, 3.0, 2.9, 2.8, 2.7, 2.6, float("nan"), 2.0, 3.5, 1.0,
          1.0, 1.0, 1.0]


@pytest.mark.parametrize("patience,factor,min_lr", [(0, 0.5, 0.0), (1, 0.5, 0.0),
                                                    (2, 0.3, 2e-4), (5, 0.5, 0.0)])
def test_plateau_rule_is_torch_reduce_lr_on_plateau(patience, factor, min_lr):
    config = RunConfig(lr=1e-3, lr_schedule="plateau", plateau_patience=patience,
                       plateau_factor=factor, min_lr=min_lr)
    ours = ValidationControl(config)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=factor, patience=patience, threshold=0.0,
        threshold_mode="abs", min_lr=min_lr)
    lrs = []
    for step, value in enumerate(VALUES):
        ours.update(value, step)
        theirs.step(value)
        lrs.append(ours.lr)
        assert ours.lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), step
    assert len(set(lrs)) > 1 or patience == 5      # the rule did reduce (5: never flat 6x)


def test_best_and_early_stop_counts():
    control = ValidationControl(RunConfig(early_stop=3))
    improved = [control.update(v, s) for s, v in enumerate([1.0, 0.5, 2.0, 2.0, 1.0])]
    assert improved == [True, False, True, False, False]
    assert (control.best, control.best_step, control.stopped) == (2.0, 2, False)
    assert control.lr == RunConfig().lr                      # the step schedule's: untouched
    control.update(float("nan"), 5)                          # NaN never improves
    assert control.stopped and control.since_best == 3
    again = ValidationControl(RunConfig(early_stop=3))
    again.load_state_dict(json.loads(json.dumps(control.state_dict())))
    assert again.state_dict() == control.state_dict()


def run(tmp_path, name, *extra):
    trainer = Trainer(parse_args(QUICK + ["--run-dir", str(tmp_path / name)] + list(extra)))
    return trainer, trainer.run()


def records(path, kind):
    return [r for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == kind]


def test_best_pt_is_the_best_validation_and_the_test_scores_it(tmp_path):
    trainer, out = run(tmp_path, "best", "--steps", "6", "--eval-every", "1", "--log-every",
                       "2", "--lr", "5e-3")
    folder = tmp_path / "best"
    vals = records(folder, "val")
    assert [v["step"] for v in vals] == [1, 2, 3, 4, 5, 6]
    best = max(vals, key=lambda v: v["mean"])
    assert [v["best"] for v in vals].count(True) >= 1
    saved = torch.load(folder / "best.pt", weights_only=False)
    assert saved["step"] == best["step"] and saved["val_sisdri"] == pytest.approx(best["mean"])
    assert not list(folder.glob(".best.pt.*"))              # atomic: no temporary left
    results = json.loads((folder / "results.json").read_text())
    assert results["tested"] == "best" and results["tested_step"] == best["step"]
    assert results["best_val_sisdri"] == pytest.approx(best["mean"])
    assert out["test"] == results["test"]
    # The tested model is best.pt's: scoring its weights again gives the same table.
    from train.data.loader import eval_batches
    from train.evaluation.scoring import evaluate
    model = trainer.model
    model.load_state_dict(saved["model"])
    again = evaluate(model, eval_batches(trainer.data.test, 4), trainer.device)
    assert float(again["sisdri"].mean()) == pytest.approx(results["test"]["mean"], abs=1e-4)

    _, last = run(tmp_path, "last", "--steps", "6", "--eval-every", "1", "--log-every", "2",
                  "--lr", "5e-3", "--test-on", "last")
    results = json.loads((tmp_path / "last" / "results.json").read_text())
    assert results["tested"] == "last" and results["tested_step"] == 6
    assert (tmp_path / "last" / "best.pt").exists()
    if best["step"] != 6:       # a different model was tested (the same seed and data)
        assert last["test"]["mean"] != pytest.approx(out["test"]["mean"], abs=1e-6)


# lr 0.05: validation worsens from step 3 on (measured: -15.8, -14.8, -17.6, -19.2 ...), so
# the lr halves at every validation from step 3 and the run stops early at step 6.
PLATEAU = ["--eval-every", "1", "--log-every", "1", "--lr", "0.05", "--no-test",
           "--lr-schedule", "plateau", "--plateau-patience", "0", "--plateau-factor", "0.5",
           "--early-stop", "4", "--checkpoint-every", "0"]


def test_plateau_and_early_stop_resume_exactly(tmp_path):
    straight, _ = run(tmp_path, "a", "--steps", "12", *PLATEAU)
    first, _ = run(tmp_path, "b", "--steps", "4", *PLATEAU)   # stopped after a reduction
    assert first.control.lr < 0.05 and not first.control.stopped
    resumed, _ = run(tmp_path, "b", "--steps", "12", "--resume", *PLATEAU)
    lr_a = [r["lr"] for r in records(tmp_path / "a", "train")]
    lr_b = [r["lr"] for r in records(tmp_path / "b", "train")]
    assert lr_a == lr_b and len(set(lr_a)) > 1               # the plateau rule reduced the lr
    assert records(tmp_path / "a", "val") == records(tmp_path / "b", "val")
    assert straight.control.state_dict() == resumed.control.state_dict()
    assert straight.step == resumed.step < 12 and straight.control.stopped
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["control"] == b["control"]
    best_a = torch.load(tmp_path / "a" / "best.pt", weights_only=False)
    best_b = torch.load(tmp_path / "b" / "best.pt", weights_only=False)
    assert best_a["step"] == best_b["step"]
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])


def test_early_stop_ends_the_run_and_a_resume_does_not_train_on(tmp_path):
    # A learning rate this large makes validation worse, so patience 1 stops early.
    trainer, _ = run(tmp_path, "stop", "--steps", "40", "--eval-every", "1", "--log-every",
                     "1", "--lr", "0.5", "--early-stop", "1", "--no-test")
    assert trainer.control.stopped and trainer.step < 40
    vals = records(tmp_path / "stop", "val")
    assert vals[-1]["step"] == trainer.step and not vals[-1]["best"]
    again, _ = run(tmp_path, "stop", "--steps", "40", "--eval-every", "1", "--log-every", "1",
                   "--lr", "0.5", "--early-stop", "1", "--no-test", "--resume")
    assert again.step == trainer.step


def test_plateau_flags_are_checked():
    with pytest.raises(SystemExit):
        parse_args(["--lr-schedule", "plateau", "--lr-decay-every", "2"])
    with pytest.raises(SystemExit):
        parse_args(["--plateau-factor", "1.5"])
    config = parse_args(["--lr-schedule", "plateau", "--early-stop", "3"])
    assert (config.lr_schedule, config.plateau_factor, config.plateau_patience,
            config.early_stop, config.test_on) == ("plateau", 0.5, 5, 3, "best")
