"""Evaluation: per-source SI-SDRi over a fixed set, the paper's summary tables, loading a
trained model, and ``python -m train.evaluate RUN_DIR`` (a checkpoint on any data, no training).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

import ugr_kernels as uk
from model import build_model

from .checkpoint import load_checkpoint
from .datasets import SourceCatalog, csv_catalog, esc50_catalog, load_sources, speech_catalog
from .mixing import DEFAULT_EVAL_SEED, SAMPLE_RATE, MixtureDataset

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
COLUMNS = ("mean", "std") + tuple(f"p{p}" for p in PERCENTILES)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[dict], device: torch.device,
             backend: str = "auto", progress=None) -> dict[str, np.ndarray]:
    """Run ``model`` over ``batches`` and collect per-source results.

    Each batch is a dict with ``mixture (B, T)``, ``sources (B, C, T)`` and ``labels (B, C)``.
    Returns arrays over all valid (example, source) pairs: ``sisdri``, ``sisdr``,
    ``labels`` (class index of the reference), ``example`` (running example index).
    """
    was_training = model.training
    model.eval()
    sisdri, sisdr, labels, example = [], [], [], []
    seen = 0
    for batch in batches:
        mix = batch["mixture"].to(device)
        ref = batch["sources"].to(device)
        est = model(mix).float()
        out = uk.weighted_sisdr(est, ref.float(), mixture=mix.float(), backend=backend)
        valid = out.mask.cpu()
        sisdri.append(out.sisdri.cpu()[valid])
        sisdr.append(out.sisdr.cpu()[valid])
        labels.append(batch["labels"][valid])
        idx = torch.arange(seen, seen + mix.shape[0]).unsqueeze(1).expand_as(valid)
        example.append(idx[valid])
        seen += mix.shape[0]
        if progress is not None:
            progress.update(mix.shape[0])
    model.train(was_training)
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0)  # noqa: E731
    return {"sisdri": cat(sisdri), "sisdr": cat(sisdr), "labels": cat(labels),
            "example": cat(example)}


def summarize(values: np.ndarray) -> dict[str, float]:
    """mean, std and the percentiles 1..99 of ``values`` (the paper's table row)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {c: float("nan") for c in COLUMNS}
    row = {"mean": float(values.mean()), "std": float(values.std())}
    row.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))})
    return row


def per_class(values: np.ndarray, labels: np.ndarray,
              class_names: Optional[Sequence[str]]) -> dict[str, dict[str, float]]:
    """``summarize`` per class of the reference source (only classes present)."""
    out = {}
    for k in np.unique(labels):
        name = class_names[int(k)] if class_names is not None and int(k) < len(class_names) \
            else str(int(k))
        out[name] = summarize(values[labels == k]) | {"count": int((labels == k).sum())}
    return out


def format_table(rows: dict[str, dict[str, float]], columns: Sequence[str] = COLUMNS,
                 title: str = "") -> str:
    """A fixed-width text table, one row per entry of ``rows`` (values in dB)."""
    name_width = max([len(str(k)) for k in rows] + [len(title), 4])
    header = f"{title:<{name_width}} " + " ".join(f"{c:>7}" for c in columns)
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        cells = []
        for c in columns:
            v = row.get(c, float("nan"))
            cells.append(f"{v:>7d}" if isinstance(v, int) else f"{v:>7.2f}")
        lines.append(f"{str(name):<{name_width}} " + " ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- trained models
def load_trained(path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model of a run folder (``RUN_DIR/checkpoint.pt``) or of a checkpoint file.

    Returns ``(model in eval mode on device, the run's args dict)``; the args hold the
    model name (``"model"``) and the steps trained (``"checkpoint_step"``). Raises
    ``ValueError`` with the path in the message for a missing, unreadable or
    foreign file.
    """
    path = Path(path)
    ckpt_path = path / "checkpoint.pt" if path.is_dir() else path
    try:
        ckpt = load_checkpoint(ckpt_path)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model" not in ckpt.get("args", {}):
        raise ValueError(f"{ckpt_path} is not a checkpoint written by python -m train "
                         f"(no model weights and model name)")
    args = dict(ckpt["args"], checkpoint_step=int(ckpt.get("step", 0)))
    state = ckpt["model"]
    # The number of sources is in the decoder's weight: (S*N, 1 or S, L) -> S outputs.
    model = build_model(args["model"], num_sources=_num_sources(state))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{ckpt_path}: weights do not fit model {args['model']!r} ({exc})") \
            from None
    return model.to(device).eval(), args


def _num_sources(state: dict) -> int:
    bias = state.get("decoder.bias")
    if bias is not None:                       # original variant: one bias per source
        return int(bias.shape[0])
    return int(state["decoder.weight"].shape[1])  # improved: groups=1, S output channels


# --------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Evaluate a trained checkpoint on a data set's test split (or a CSV of "
                    "files) without training: prints the paper's table (mean, std, p1..p99 "
                    "of per-source SI-SDRi) and the per-class table, and writes "
                    "results.json and test_sisdri.csv. By default the data, task, mixture "
                    "length and number of items are the run's own, so it reproduces the "
                    "run's final test.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder written by python -m train, or a checkpoint.pt")
    p.add_argument("--data-dir", default=None,
                   help="folder laid out like shared/data (esc50/meta.csv, speech/meta.csv); "
                        "default: the run's own data (--data-dir/--data-csv, else synthetic)")
    p.add_argument("--data-csv", default=None,
                   help="a CSV with columns filename,label[,split] (paths relative to the "
                        "CSV's folder), used as the env (or speech for --task speech) sources")
    p.add_argument("--synthetic", action="store_true",
                   help="evaluate on the embedded synthetic data, whatever the run used")
    p.add_argument("--task", choices=("env", "speech", "mixed"), default=None,
                   help="which mixtures to make (default: the run's task)")
    p.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                   help="sources to mix: one split of the catalogue, or all of its files "
                        "(e.g. a CSV of held-out recordings without a split column)")
    p.add_argument("--items", type=int, default=None,
                   help="number of fixed, seeded test mixtures (default: the run's --test-items)")
    p.add_argument("--segment-seconds", type=float, default=None,
                   help="length of each mixture at 8 kHz (default: the run's)")
    p.add_argument("--batch-size", type=int, default=8, help="mixtures per model call")
    p.add_argument("--out-dir", default=None,
                   help="folder for results.json and test_sisdri.csv (default: "
                        "RUN/eval-<data>-<task>-<split>, never the run's own results)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _catalogs(task: str, data_dir, data_csv, synthetic: bool) -> tuple[dict, str]:
    """The source catalogues a task needs, and a short name of the data for folder names."""
    if synthetic or (data_dir is None and data_csv is None):
        from .synthetic import synthetic_catalog

        return synthetic_catalog(), "synthetic"
    if data_csv is not None:
        if task == "mixed":
            raise ValueError("--data-csv provides one catalogue; --task mixed needs --data-dir")
        cat = csv_catalog(data_csv)
        return {"speech" if task == "speech" else "env": cat}, Path(data_csv).stem
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data directory not found: {data_dir}")
    cats = {}
    if task in ("env", "mixed"):
        cats["env"] = esc50_catalog(data_dir)
    if task in ("speech", "mixed"):
        cats["speech"] = speech_catalog(data_dir)
    return cats, data_dir.name


def fixed_mixtures(task: str, catalogs: dict, split: str, segment_len: int, items: int,
                   progress: bool) -> MixtureDataset:
    """Fixed, seeded mixtures of one split (the trainer's own test set for split='test')."""
    banks = {}
    for key, cat in catalogs.items():
        if split == "all":
            part = SourceCatalog([dataclasses.replace(it, split="test") for it in cat],
                                 name=cat.name, classes=cat.classes)
        else:
            part = cat.split(split)
        if len(part) == 0:
            raise ValueError(f"catalogue {cat.name!r} has no {split!r} items "
                             f"(try --split all for a CSV without a split column)")
        banks[key] = load_sources(part, progress=progress, desc=f"loading {part.name}")
    return MixtureDataset(banks, task, segment_len, DEFAULT_EVAL_SEED, items)


def main(argv=None) -> dict:
    """``python -m train.evaluate``; exits 2 with a one-line message on bad input."""
    from .plots import save_run_plots
    from .results import write_results  # imports this module: not at the top

    args = build_parser().parse_args(argv)
    if sum(x is not None and x is not False for x in (args.data_dir, args.data_csv,
                                                      args.synthetic or None)) > 1:
        _fail("give at most one of --data-dir, --data-csv and --synthetic")
    for name in ("items", "batch_size", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            _fail(f"--{name.replace('_', '-')} must be a positive integer")
    if args.segment_seconds is not None and not args.segment_seconds > 0:
        _fail("--segment-seconds must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, run_args = load_trained(args.run, device)
        task = args.task or run_args.get("task", "env")
        if args.data_dir or args.data_csv or args.synthetic:
            data_dir, data_csv = args.data_dir, args.data_csv
        else:
            data_dir, data_csv = run_args.get("data_dir"), run_args.get("data_csv")
        catalogs, data_name = _catalogs(task, data_dir, data_csv, args.synthetic)
        seconds = args.segment_seconds or run_args.get("segment_seconds", 4.0)
        items = args.items or run_args.get("test_items", 500)
        dataset = fixed_mixtures(task, catalogs, args.split, int(round(seconds * SAMPLE_RATE)),
                                 items, not args.no_progress)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # AudioFileError is a ValueError
        _fail(str(exc))
    run_path = Path(args.run)
    run_dir = run_path if run_path.is_dir() else run_path.parent
    out_dir = Path(args.out_dir) if args.out_dir else \
        run_dir / f"eval-{data_name}-{task}-{args.split}"
    print(f"evaluating {args.run} (model {run_args['model']}, step "
          f"{run_args['checkpoint_step']}) on {len(dataset)} {task} mixtures of {seconds:g} s "
          f"from {data_name} ({args.split}), device {device}")

    t0 = time.perf_counter()
    progress = None
    if not args.no_progress:
        from tqdm import tqdm
        progress = tqdm(total=len(dataset), desc="evaluate", unit="mix", leave=False)
    n, b = len(dataset), args.batch_size
    batches = (dataset.batch(range(s, min(n, s + b))) for s in range(0, n, b))
    res = evaluate(model, batches, device, progress=progress)
    if progress is not None:
        progress.close()
    info = {"checkpoint": str(args.run), "model": run_args["model"], "task": task,
            "data": str(data_csv or data_dir or "synthetic"), "split": args.split,
            "segment_seconds": seconds, "wall_seconds": round(time.perf_counter() - t0, 1)}
    out = write_results(out_dir, res, list(dataset.class_names), info=info)
    save_run_plots(out_dir)
    return out


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
