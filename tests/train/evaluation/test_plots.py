"""train.evaluation.plots and .report: sweep arms and seeds, one run's pictures, the
report's comparison plots."""
import json

import numpy as np
import pytest

from train.evaluation import plots, report

pytest.importorskip("matplotlib", reason="matplotlib is not installed: plots are optional")


@pytest.mark.parametrize("name, arm", [
    ("uniform_seed0", "uniform"), ("curriculum seed 12", "curriculum"),
    ("gs3_ge0_seed1", "gs3_ge0"), ("robust-alpha0.1", "robust-alpha0.1"),
    ("seed3", "seed3"),
])
def test_arm_of_strips_the_seed(name, arm):
    assert plots.arm_of(name) == arm


def test_arms_get_distinct_hues_and_seeds_shades_of_them():
    names = ["uniform_seed0", "curriculum_seed0", "uniform_seed1", "curriculum_seed1",
             "uniform_seed2"]
    c = [np.array(x[:3]) for x in plots.arm_colors(names)]
    # Seeds of one arm: the same hue (colours on one line towards white), lighter each time.
    u0, u1, u2 = c[0], c[2], c[4]
    assert not np.allclose(u0, u1) and not np.allclose(u1, u2)
    assert np.all(u1 >= u0 - 1e-9) and np.all(u2 >= u1 - 1e-9)
    t = (u1 - u0) / (1 - u0)
    assert np.allclose(t, t[0])
    # Different arms: different base colours.
    assert not np.allclose(c[0], c[1])
    assert np.allclose(plots.arm_colors(["solo"])[0], plots.arm_colors(["solo", "other"])[0])


def fake_run(path, seed=0, n=300):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"kind": "train", "step": 50, "loss": 1.0}) + "\n")
        for k, step in enumerate((100, 200, 300)):
            v = rng.normal(2 + k + seed, 3, 200)
            row = {"kind": "val", "step": step, "mean": float(v.mean()),
                   **{f"p{p}": float(np.percentile(v, p)) for p in (5, 25, 75, 95)}}
            f.write(json.dumps(row) + "\n")
    with open(path / "test_sisdri.csv", "w") as f:
        f.write("example,label,class,sisdr,sisdri\n")
        for i, x in enumerate(rng.normal(5 + seed, 4, n)):
            f.write(f"{i // 2},0,dog,{x + 1:.4f},{x:.4f}\n")
    return path


def test_one_run_gets_a_val_curve_and_a_histogram(tmp_path, capsys):
    run = fake_run(tmp_path / "r")
    saved = plots.save_run_plots(run)
    assert [p.name for p in saved] == ["val_curve.png", "test_sisdri_hist.png"]
    assert all(p.stat().st_size > 10_000 for p in saved)
    assert "plots:" in capsys.readouterr().out


def test_a_run_without_test_gets_only_its_curve(tmp_path):
    run = fake_run(tmp_path / "r")
    (run / "test_sisdri.csv").unlink()
    assert [p.name for p in plots.save_run_plots(run, quiet=True)] == ["val_curve.png"]


def test_without_matplotlib_nothing_is_drawn(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path / "r")
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    assert plots.save_run_plots(run) == []
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not list(run.glob("*.png"))


def test_report_compares_a_sweep(tmp_path):
    runs = [report.load_run(fake_run(tmp_path / f"{arm}_seed{s}", seed=s))
            for arm in ("uniform", "robust") for s in (0, 1)]
    assert runs[0]["val"] == [(100, runs[0]["val_rows"][0]["mean"]),
                              (200, runs[0]["val_rows"][1]["mean"]),
                              (300, runs[0]["val_rows"][2]["mean"])]
    saved = report.plot(runs, tmp_path / "cmp")
    assert sorted(p.name for p in saved) == ["sisdri_hist.png", "val_curves.png"]
    assert all(p.stat().st_size > 10_000 for p in saved)
