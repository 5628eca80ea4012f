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
    p.add_argument("--test-manifest", default=None, metavar="CSV",
                   help="pre-mixed data: a LibriMix-format metadata CSV (mixture_ID, "
                        "mixture_path, source_1_path ... source_S_path, length), evaluated "
                        "whole item by whole item (the first --items rows)")
    p.add_argument("--wsj0-mix-dir", default=None, metavar="DIR",
                   help="pre-mixed data in the wsj0-mix layout (tr/ cv/ tt/, each with mix/ "
                        "s1/ ... sS/): --split test reads tt/, val cv/, train tr/")
    p.add_argument("--keep-noise", action="store_true",
                   help="pre-mixed data: keep the noise (noise_path, noise/) as the last source")
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
    if sum(bool(x) for x in (args.data_dir, args.data_csv, args.synthetic, args.test_manifest,
                             args.wsj0_mix_dir)) > 1:
        parser.error("give at most one of --data-dir, --data-csv, --synthetic, "
                     "--test-manifest and --wsj0-mix-dir")
    if args.test_manifest and args.split != "test":
        parser.error("--test-manifest is one split: leave --split at test")
    if args.split == "all" and args.wsj0_mix_dir:
        parser.error("--wsj0-mix-dir: choose --split train, val or test")
    return run_command(lambda: _evaluate(args), debug=args.debug)


def _evaluate(args) -> dict:
    set_threads(args.threads)
    device = pick_device(args.device)
    model, trained = load_trained(args.run, device)
    run = {**DEFAULTS.to_dict(), **trained}   # options an old checkpoint lacks: the defaults
    task = args.task or run["task"]
    manifests, wsj0, keep_noise = {}, None, args.keep_noise
    if args.synthetic:
        data_dir = data_csv = None
    elif args.data_dir or args.data_csv:
        data_dir, data_csv = args.data_dir, args.data_csv
    elif args.test_manifest or args.wsj0_mix_dir:
        data_dir = data_csv = None
        manifests, wsj0 = {"test": args.test_manifest} if args.test_manifest else {}, \
            args.wsj0_mix_dir
    else:   # the run's own data, pre-mixed or not
        data_dir, data_csv = run["data_dir"], run["data_csv"]
        wsj0 = run["wsj0_mix_dir"]
        keep_noise = keep_noise or run["keep_noise"]
        if not wsj0 and run[f"{args.split}_manifest"]:
            manifests = {args.split: run[f"{args.split}_manifest"]}
    S = model.num_sources
    split = "test" if args.test_manifest else args.split
    catalogs, data_name = catalogs_for(task, data_dir, data_csv, manifests=manifests,
                                       wsj0_mix_dir=wsj0, keep_noise=keep_noise,
                                       splits=(split,))
    seconds = args.segment_seconds or run["segment_seconds"]
    dataset = evaluation_set(task, catalogs, split, int(round(seconds * SAMPLE_RATE)),
                             args.items or run["test_items"], not args.no_progress,
                             num_sources=S)
    if dataset.num_sources != S:
        raise ValueError(f"{args.run}: the model separates {S} sources, the data has "
                         f"{dataset.num_sources}")
    premixed = bool(manifests or wsj0)
    if premixed:
        task = "premixed"
    run_path = Path(args.run)
    run_dir = run_path if run_path.is_dir() else run_path.parent
    out = RunFolder(args.out_dir or run_dir / f"eval-{data_name}-{task}-{split}")
    what = "whole pre-mixed items" if premixed else f"{task} mixtures of {seconds:g} s"
    print(f"evaluating {args.run} (model {run['model']}, {S} sources, step "
          f"{run['checkpoint_step']}) on {len(dataset)} {what} from {data_name} ({split}), "
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
            "data": str(manifests.get(split) or wsj0 or data_csv or data_dir or "synthetic"),
            "split": split, "num_sources": S,
            "segment_seconds": None if premixed else seconds,
            "wall_seconds": round(time.perf_counter() - t0, 1)}
    results = write_test_results(out, res, list(dataset.class_names), info=info)
    save_run_plots(out.path)
    return results
