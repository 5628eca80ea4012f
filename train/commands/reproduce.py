"""``python -m train.reproduce robust|curriculum|class``: the paper's three experiments.

Each sweep builds a ``RunConfig`` per run (the scale's settings, then the arm's
weighting), trains it with the ``Trainer`` of ``python -m train``, then writes a
summary (CSV + JSON) and plots into ``--out/<sweep>/``. Run folders (checkpoints)
go to ``--runs/<sweep>/`` and are not meant to be committed.

Scales (``--scale``): ``cpu`` fits each sweep in under 2 hours on a 2-core CPU
(the tiny SuDoRM-RF, 1 s mixtures, batch 8); ``gpu`` is the paper's setting
(SuDoRM-RF 1.0x, 4 s, batch 28) for a GPU. ``--steps`` etc. override a scale.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ..evaluation.report import load_run, plot
from ..run.config import RunConfig
from ..run.trainer import Trainer
from ..run_folder import RunFolder
from .common import (
    Parser,
    add_machine_flags,
    finite_float,
    positive_float,
    positive_int,
    run_command,
)

SCALES = {
    "cpu": dict(model="sudormrf-tiny", segment=1.0, batch=8, steps=1500, eval_every=150,
                val_items=128, test_items=400, threads=2),
    "gpu": dict(model="sudormrf-1.0x", segment=4.0, batch=28, steps=100_000, eval_every=2000,
                val_items=1000, test_items=3000, threads=None),
}
ALPHAS = [("0", 0.0), ("1/15", 1 / 15), ("1/10", 1 / 10), ("1/5", 1 / 5)]
GAMMAS = [(0.0, 0.0), (0.0, 3.0), (3.0, 0.0)]
PAPER_ROBUST = {
    "0": [5.0, 9.0, -17.5, -6.9, -2.5, 0.0, 2.7, 9.5, 17.1, 22.0, 31.5],
    "1/15": [4.6, 7.8, -14.7, -4.4, -1.4, 0.1, 2.4, 8.4, 15.2, 19.4, 29.0],
    "1/10": [3.6, 6.0, -6.5, -2.2, -1.0, -0.1, 1.1, 6.1, 12.1, 16.1, 23.5],
    "1/5": [3.0, 4.8, -2.8, -0.9, -0.3, 0.0, 0.6, 4.9, 9.8, 13.2, 19.8],
}
COLS = ["mean", "std", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99"]


def _config(opts, seed: int, **arm) -> RunConfig:
    """The configuration of one run: the sweep's scale and seed, then the arm's options."""
    return RunConfig(fused=True, model=opts.model, segment_seconds=opts.segment,
                     batch_size=opts.batch, steps=opts.steps, eval_every=opts.eval_every,
                     val_items=opts.val_items, test_items=opts.test_items, eval_batch_size=16,
                     seed=seed, log_every=25, checkpoint_every=0, data_dir=opts.data_dir,
                     threads=opts.threads, device=opts.device, no_progress=opts.no_progress,
                     **arm)


def _train(opts, sweep, name, config: RunConfig):
    """Train one run (or reuse a finished one) and load its outputs."""
    run_dir = Path(opts.runs) / sweep / name
    if RunFolder(run_dir).results_json.exists() and not opts.force:
        print(f"[{sweep}] {name}: done already ({run_dir}), reusing")
    else:
        print(f"[{sweep}] {name}: training -> {run_dir}")
        t0 = time.time()
        Trainer(dataclasses.replace(config, run_dir=str(run_dir))).run()
        print(f"[{sweep}] {name}: {time.time() - t0:.0f} s")
    return load_run(run_dir)


def robust(opts, out):
    runs, rows = [], []
    for label, alpha in ALPHAS:
        arm = dict(weighting=("uniform",)) if alpha == 0 else dict(weighting=("robust",),
                                                                    alpha=alpha)
        run = _train(opts, "robust", f"alpha_{label.replace('/', 'over')}",
                     _config(opts, opts.seeds[0], task="env", **arm))
        runs.append(run)
        rows.append({"alpha": label, **{c: run["results"]["test"][c] for c in COLS},
                     "train_seconds": run["results"].get("wall_seconds"),
                     **{f"paper_{c}": v for c, v in zip(COLS, PAPER_ROBUST[label])}})
    _write(out, rows, opts)
    plot(runs, out, labels=[f"alpha={a}" for a, _ in ALPHAS])
    return rows


def curriculum(opts, out):
    runs, labels, rows = [], [], []
    for seed in opts.seeds:
        for kind in ("uniform", "curriculum"):
            arm = dict(weighting=("uniform",)) if kind == "uniform" else dict(
                weighting=("curriculum",), beta_start=opts.beta_start, beta_end=0.0,
                beta_schedule="linear", beta_steps=max(1, opts.steps // 2))
            run = _train(opts, "curriculum", f"{kind}_seed{seed}",
                         _config(opts, seed, task="env", **arm))
            runs.append(run)
            labels.append(f"{kind} seed {seed}")
            rows.append({"kind": kind, "seed": seed, "val_curve": run["val"],
                         "final_val": run["val"][-1][1],
                         "test_mean": run["results"]["test"]["mean"],
                         "train_seconds": run["results"].get("wall_seconds")})
    finals = [r["final_val"] for r in rows if r["kind"] == "uniform"]
    threshold = opts.threshold if opts.threshold is not None else 0.9 * float(np.mean(finals))
    for r in rows:
        reached = [s for s, v in r["val_curve"] if v >= threshold]
        r["threshold_db"] = threshold
        r["steps_to_threshold"] = reached[0] if reached else None
    flat = [{k: v for k, v in r.items() if k != "val_curve"} for r in rows]
    _write(out, flat, opts, extra={"curves": {f"{r['kind']}_seed{r['seed']}": r["val_curve"]
                                        for r in rows}})
    plot(runs, out, labels=labels)
    return flat


def class_bias(opts, out):
    rows = []
    for gs, ge in GAMMAS:
        for seed in opts.seeds:
            arm = dict(weighting=("uniform",)) if (gs, ge) == (0, 0) else dict(
                weighting=("class",), gamma={"speech": gs, "env": ge})
            run = _train(opts, "class", f"gs{gs:g}_ge{ge:g}_seed{seed}",
                         _config(opts, seed, task="mixed", **arm))
            pc = run["results"]["per_class"]
            rows.append({"gamma_speech": gs, "gamma_env": ge, "seed": seed,
                         "speech": pc["speech"]["mean"], "env": pc["env"]["mean"],
                         "combined": run["results"]["test"]["mean"],
                         "train_seconds": run["results"].get("wall_seconds")})
    summary = []
    for gs, ge in GAMMAS:
        sel = [r for r in rows if (r["gamma_speech"], r["gamma_env"]) == (gs, ge)]
        entry = {"gamma_speech": gs, "gamma_env": ge, "seeds": len(sel)}
        for k in ("speech", "env", "combined"):
            vals = np.array([r[k] for r in sel])
            entry[f"{k}_mean"] = float(vals.mean())
            entry[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        summary.append(entry)
    _write(out, summary, opts, extra={"per_seed": rows})
    _plot_class_bias(summary, out)
    return summary


def _plot_class_bias(summary, out: Path):
    """Grouped bars: mean test SI-SDRi per class for each gamma setting, +- std over seeds."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no class-bias plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.25
    for k, key in enumerate(("speech", "env", "combined")):
        xs = [i + (k - 1) * width for i in range(len(summary))]
        ax.bar(xs, [e[f"{key}_mean"] for e in summary], width,
               yerr=[e[f"{key}_std"] for e in summary], capsize=3, label=key)
    ax.set_xticks(range(len(summary)))
    ax.set_xticklabels([f"gamma speech={e['gamma_speech']:g}\nenv={e['gamma_env']:g}"
                        for e in summary])
    ax.set_ylabel("mean test SI-SDRi (dB)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "class_bias.png", dpi=120)
    plt.close(fig)


def _write(out: Path, rows, opts, extra=None):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "summary.json").write_text(json.dumps({"settings": vars(opts), "rows": rows,
                                                  **(extra or {})}, indent=2))
    print(f"wrote {out / 'summary.csv'}")


SWEEPS = {"robust": robust, "curriculum": curriculum, "class": class_bias}


def build_parser() -> Parser:
    p = Parser(prog="python -m train.reproduce",
               description="Run one of the paper's sweeps and summarise it.")
    p.add_argument("sweep", choices=sorted(SWEEPS), help="which experiment")
    p.add_argument("--data-dir", default="../shared/data",
                   help="real audio (shared/data layout); '' for the synthetic data")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="preset sizes")
    p.add_argument("--model", default=None, help="override the scale's model")
    p.add_argument("--segment", type=positive_float, default=None,
                   help="override the scale's segment (seconds)")
    for key in ("batch", "steps", "eval_every", "val_items", "test_items"):
        p.add_argument(f"--{key.replace('_', '-')}", type=positive_int, default=None,
                       help=f"override the scale's {key}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds (robust uses the first)")
    p.add_argument("--beta-start", type=finite_float, default=-0.2,
                   help="curriculum start coefficient")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help="curriculum: validation SI-SDRi to reach (default 90%% of uniform's final)")
    p.add_argument("--runs", default="runs/reproduce", help="folder for the run folders")
    p.add_argument("--out", default="docs/results", help="folder for summaries and plots")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    add_machine_flags(p, "hardware (--threads: override the scale's threads)")
    return p


def main(argv=None):
    """``python -m train.reproduce``; a bad flag or file stops it with one line (exit 2)."""
    opts = build_parser().parse_args(argv)
    for key, value in SCALES[opts.scale].items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.data_dir = opts.data_dir or None
    return run_command(lambda: _sweep(opts), debug=opts.debug)


def _sweep(opts):
    t0 = time.time()
    rows = SWEEPS[opts.sweep](opts, Path(opts.out) / opts.sweep)
    print(f"sweep {opts.sweep} took {(time.time() - t0) / 60:.1f} min")
    return rows
