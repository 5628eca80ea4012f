"""``python -m train.evaluate RUN``: a trained checkpoint on fixed test mixtures, no training.

By default the data, task, mixture length and number of items are the run's own (from
its checkpoint; options it lacks take ``RunConfig``'s defaults), so it reproduces the
run's final test; the flags choose other data.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..data.audio import SAMPLE_RATE
from ..data.loader import EVAL_SPLITS, catalogs_for, eval_batches, evaluation_set
from ..data.mixing import TASKS
from ..evaluation.plots import save_run_plots
from ..evaluation.scoring import evaluate
from ..evaluation.tables import write_test_results
from ..run.config import RunConfig
from ..run_folder import RunFolder, load_trained
from .common import (
    Parser,
    add_machine_flags,
    number,
    pick_device,
    positive_int,
    run_command,
    set_threads,
)

DEFAULTS = RunConfig()
_positive_seconds = number(float, 0.0, strict=True, what="a positive number of seconds")


def build_parser() -> Parser:
    p = Parser(
        prog="python -m train.evaluate",
        description="Evaluate a trained checkpoint on a data set's test split (or a CSV of "
                    "files) without training: prints the paper's table (mean, std, p1..p99 "
                    "of per-source SI-SDRi) and the per-class table, and writes "
                    "results.json and test_sisdri.csv. By default the data, task, mixture "
                    "length and number of items are the run's own, so it reproduces the "
                    "run's final test.")
    p.add_argument("run", help="run folder written by python -m train, or a checkpoint.pt")
    p.add_argument("--data-dir", default=None,
                   help="folder laid out like shared/data (esc50/meta.csv, speech/meta.csv); "
                        "default: the run's own data (--data-dir/--data-csv, else synthetic)")
    p.add_argument("--data-csv", default=None,
                   help="a CSV with columns filename,label[,split] (paths relative to the "
                        "CSV's folder), used as the env (or speech for --task speech) sources")
    p.add_argument("--synthetic", action="store_true",
                   help="evaluate on the embedded synthetic data, whatever the run used")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="which mixtures to make (default: the run's task)")
    p.add_argument("--split", choices=EVAL_SPLITS, default="test",
                   help="sources to mix: one split of the catalogue, or all of its files "
                        "(e.g. a CSV of held-out recordings without a split column)")
    p.add_argument("--items", type=positive_int, default=None,
                   help="number of fixed, seeded test mixtures (default: the run's --test-items)")
    p.add_argument("--segment-seconds", type=_positive_seconds, default=None,
                   help="length of each mixture at 8 kHz (default: the run's)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.eval_batch_size,
                   help="mixtures per model call")
    p.add_argument("--out-dir", default=None,
                   help="folder for results.json and test_sisdri.csv (default: "
                        "RUN/eval-<data>-<task>-<split>, never the run's own results)")
    add_machine_flags(p)
    return p


def main(argv=None) -> dict:
    """``python -m train.evaluate``; a bad flag or file stops it with one line (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if sum(bool(x) for x in (args.data_dir, args.data_csv, args.synthetic)) > 1:
        parser.error("give at most one of --data-dir, --data-csv and --synthetic")
    return run_command(lambda: _evaluate(args), debug=args.debug)


def _evaluate(args) -> dict:
    set_threads(args.threads)
    device = pick_device(args.device)
    model, trained = load_trained(args.run, device)
    run = {**DEFAULTS.to_dict(), **trained}   # options an old checkpoint lacks: the defaults
    task = args.task or run["task"]
    if args.synthetic:
        data_dir = data_csv = None
    elif args.data_dir or args.data_csv:
        data_dir, data_csv = args.data_dir, args.data_csv
    else:
        data_dir, data_csv = run["data_dir"], run["data_csv"]
    catalogs, data_name = catalogs_for(task, data_dir, data_csv)
    seconds = args.segment_seconds or run["segment_seconds"]
    dataset = evaluation_set(task, catalogs, args.split, int(round(seconds * SAMPLE_RATE)),
                             args.items or run["test_items"], not args.no_progress)
    run_path = Path(args.run)
    run_dir = run_path if run_path.is_dir() else run_path.parent
    out = RunFolder(args.out_dir or run_dir / f"eval-{data_name}-{task}-{args.split}")
    print(f"evaluating {args.run} (model {run['model']}, step {run['checkpoint_step']}) on "
          f"{len(dataset)} {task} mixtures of {seconds:g} s from {data_name} ({args.split}), "
          f"device {device}")

    t0 = time.perf_counter()
    progress = None
    if not args.no_progress:
        from tqdm import tqdm
        progress = tqdm(total=len(dataset), desc="evaluate", unit="mix", leave=False)
    res = evaluate(model, eval_batches(dataset, args.batch_size), device, progress=progress)
    if progress is not None:
        progress.close()
    info = {"checkpoint": str(args.run), "model": run["model"], "task": task,
            "data": str(data_csv or data_dir or "synthetic"), "split": args.split,
            "segment_seconds": seconds, "wall_seconds": round(time.perf_counter() - t0, 1)}
    results = write_test_results(out, res, list(dataset.class_names), info=info)
    save_run_plots(out.path)
    return results
