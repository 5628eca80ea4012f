"""pmf diagnostics of a logging window (train.run.metrics): ESS = 1 / (n sum p^2), the
largest weight and the weight share per class, against numpy on known pmfs; in
metrics.jsonl, with one warning when the ESS collapses."""
import json

import numpy as np
import pytest
import torch

from train.commands.train import parse_args
from train.run.distributed import DistInfo
from train.run.metrics import StepMetrics
from train.run.trainer import Trainer


def softmax_masked(scores, mask):
    e = np.where(mask, np.exp(scores - scores[mask].max()), 0.0)
    return e / e.sum()


def test_window_diagnostics_match_numpy_on_known_pmfs():
    rng = np.random.default_rng(0)
    metrics = StepMetrics(torch.device("cpu"), window=4, num_classes=3)
    steps, expected_ess, expected_max = [], [], []
    class_weight = np.zeros(3)
    for k in range(4):
        scores = rng.normal(scale=[0.1, 1.0, 3.0, 0.0][k], size=(5, 2))
        mask = np.ones((5, 2), bool)
        mask[k, 1] = False                              # a masked item is not an item
        p = softmax_masked(scores, mask)
        labels = rng.integers(0, 3, size=(5, 2))
        ok = k != 3                                      # the last step is skipped
        metrics.add(torch.tensor(ok), torch.tensor(1.0), torch.zeros(5, 2),
                    torch.from_numpy(mask), torch.from_numpy(p).float(),
                    torch.from_numpy(labels))
        if ok:
            expected_ess.append(1.0 / (mask.sum() * (p ** 2).sum()))
            expected_max.append(p.max())
            np.add.at(class_weight, labels[mask], p[mask])
        steps.append(p)
    m = metrics.read(DistInfo())
    assert m["pmf_ess"] == pytest.approx(np.mean(expected_ess), rel=1e-6)
    assert m["pmf_ess_min"] == pytest.approx(min(expected_ess), rel=1e-6)
    assert m["pmf_ess_max"] == pytest.approx(max(expected_ess), rel=1e-6)
    assert m["pmf_max_weight"] == pytest.approx(max(expected_max), rel=1e-6)
    assert m["pmf_class_share"] == pytest.approx(list(class_weight / class_weight.sum()),
                                                 rel=1e-6)
    assert min(expected_ess) < 0.5 < max(expected_ess) <= 1.0   # the pmfs differ
    # The read starts a new window.
    metrics.add(torch.tensor(True), torch.tensor(1.0), torch.zeros(2, 2),
                torch.ones(2, 2, dtype=torch.bool), torch.full((2, 2), 0.25),
                torch.zeros(2, 2, dtype=torch.long))
    again = metrics.read(DistInfo())
    assert again["pmf_ess"] == pytest.approx(1.0) and again["pmf_max_weight"] == 0.25
    assert again["pmf_class_share"] == [1.0, 0.0, 0.0]


def test_uniform_and_one_hot_pmfs_are_the_ends_of_the_scale():
    metrics = StepMetrics(torch.device("cpu"), window=2)
    mask = torch.ones(4, 2, dtype=torch.bool)
    one_hot = torch.zeros(4, 2)
    one_hot[2, 1] = 1.0
    for p in (torch.full((4, 2), 1 / 8), one_hot):
        metrics.add(torch.tensor(True), torch.tensor(0.0), None, mask, p)
    m = metrics.read(DistInfo())
    assert (m["pmf_ess_max"], m["pmf_ess_min"], m["pmf_max_weight"]) == \
        pytest.approx((1.0, 1 / 8, 1.0))
    assert "pmf_class_share" not in m


QUICK = ["--model", "sudormrf-tiny", "--segment-seconds", "0.25", "--batch-size", "4",
         "--val-items", "4", "--test-items", "4", "--eval-batch-size", "4",
         "--no-progress", "--threads", "1", "--fused", "--num-workers", "0", "--no-test",
         "--eval-every", "0"]


def test_metrics_jsonl_has_the_diagnostics_and_a_collapse_warns_once(tmp_path, capsys):
    run_dir = tmp_path / "run"
    trainer = Trainer(parse_args(QUICK + [
        "--run-dir", str(run_dir), "--task", "mixed", "--weighting", "robust+class",
        "--gamma", "speech=3", "--alpha", "0.02", "--steps", "4", "--log-every", "2",
        "--ess-warn", "1.01"]))                       # every pmf is below 1.01: warn
    trainer.run()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert len(train) == 2
    for r in train:
        assert 1 / 8 <= r["pmf_ess_min"] <= r["pmf_ess"] <= r["pmf_ess_max"] < 1.0
        assert 1 / 8 < r["pmf_max_weight"] <= 1.0
        assert set(r["pmf_class_share"]) == {"speech", "env"}
        assert sum(r["pmf_class_share"].values()) == pytest.approx(1.0)
        # gamma=3 for speech, which is half of the items: it takes most of the weight.
        assert r["pmf_class_share"]["speech"] > 0.5
    err = capsys.readouterr().err
    assert err.count("effective sample size") == 1


def test_uniform_weighting_has_full_ess_and_no_class_shares(tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer(parse_args(QUICK + ["--run-dir", str(run_dir), "--steps", "2", "--log-every",
                                "2"])).run()
    (train,) = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                if '"train"' in x]
    assert train["pmf_ess"] == pytest.approx(1.0) and "pmf_class_share" not in train
    assert "effective sample size" not in capsys.readouterr().err
