"""python -m train.reproduce (train.commands.reproduce): each sweep builds RunConfigs,
trains them, and writes its summary and plots."""
import importlib.util
import json
import math
from types import SimpleNamespace

from train import reproduce
from train.commands.reproduce import _config
from train.run.config import RunConfig


def test_a_sweep_run_is_a_run_config_of_the_scale_and_the_arm():
    opts = SimpleNamespace(model="sudormrf-tiny", segment=1.0, batch=8, steps=1500,
                           eval_every=150, val_items=128, test_items=400, data_dir=None,
                           threads=2, device=None, no_progress=True)
    config = _config(opts, 3, task="mixed", weighting=("class",),
                     gamma={"speech": 3.0, "env": 0.0})
    assert isinstance(config, RunConfig)
    assert (config.seed, config.task, config.weighting, config.gamma) == \
        (3, "mixed", ("class",), {"speech": 3.0, "env": 0.0})
    assert (config.model, config.segment_seconds, config.batch_size, config.steps,
            config.fused, config.threads) == ("sudormrf-tiny", 1.0, 8, 1500, True, 2)
    assert config.lr == RunConfig().lr           # what the sweep does not set: the defaults


def test_reproduce_robust_sweep_writes_summary_and_plots(tmp_path):
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
