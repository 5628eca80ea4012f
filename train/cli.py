"""Command line of ``python -m train``: every flag, with what it does."""
from __future__ import annotations

import argparse
import math

from model import MODEL_CONFIGS

from .audio import SAMPLE_RATE
from .config import RunConfig

WEIGHTINGS = ("uniform", "robust", "curriculum", "class", "temperature")
SCHEDULE_KINDS = ("constant", "linear", "cosine", "exponential", "step")
LOSS_BACKENDS = ("unfused", "auto", "torch", "cpp", "triton", "cuda", "reference")


MIN_SEGMENT_SECONDS = 0.1  # shorter mixtures are a handful of encoder frames: nothing to learn


def _number(kind, lowest=None, strict=False, what=None):
    """An argparse type: a finite ``kind`` (int/float), > lowest (strict) or >= lowest.

    argparse prefixes the message with the flag (``argument --lr: ...``), so every
    rejection names the flag it came from.
    """
    if what is None:
        noun = "integer" if kind is int else "finite number"
        what = (f"a {noun}" if lowest is None
                else f"a {'positive' if strict else 'non-negative'} {noun}")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} (not finite)")
        if lowest is not None and (value < lowest or (strict and value == lowest)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _number(int, 0, strict=True)
_non_negative_int = _number(int, 0)
_positive_float = _number(float, 0.0, strict=True)
_finite_float = _number(float)
_segment_seconds = _number(float, MIN_SEGMENT_SECONDS,
                           what=f"a finite number of seconds >= {MIN_SEGMENT_SECONDS}")


def _workers(text: str):
    """``auto`` or a non-negative integer."""
    return "auto" if text == "auto" else _non_negative_int(text)


def _gammas(text: str) -> dict[str, float]:
    """``speech=3,env=0`` -> {"speech": 3.0, "env": 0.0}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(
                f"expected CLASS=GAMMA pairs like speech=3,env=0, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"gamma for {name!r} is not a number: {value!r}") from None
        if not math.isfinite(out[name.strip()]):
            raise argparse.ArgumentTypeError(f"gamma for {name!r} must be finite, got {value!r}")
    if not out:
        raise argparse.ArgumentTypeError("expected at least one CLASS=GAMMA pair")
    return out


def _weightings(text: str) -> list[str]:
    parts = [p.strip() for p in text.split("+") if p.strip()]
    bad = [p for p in parts if p not in WEIGHTINGS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"unknown weighting {bad or text!r}; choose from {', '.join(WEIGHTINGS)} "
            f"(combine with '+', e.g. robust+class)")
    return parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train SuDoRM-RF with unified gradient reweighting (weighted PIT SI-SDRi). "
                    "Without --data-dir it trains on embedded synthetic speech-like and "
                    "environmental-like sources; select real audio with --data-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None,
                   help="folder laid out like shared/data (esc50/meta.csv, speech/meta.csv). "
                        "Default: embedded synthetic data")
    g.add_argument("--data-csv", default=None,
                   help="your own sources: a CSV with columns filename,label[,split] (paths "
                        "relative to the CSV's folder); used as the 'env' (or 'speech' for "
                        "--task speech) catalogue instead of --data-dir")
    g.add_argument("--task", choices=("env", "speech", "mixed"), default="env",
                   help="env: two environmental sounds; speech: two speakers; mixed: one "
                        "speech + one environmental source (classes 'speech', 'env')")
    g.add_argument("--segment-seconds", type=_segment_seconds, default=4.0,
                   help=f"length of each training/evaluation mixture in seconds (at "
                        f"{SAMPLE_RATE} Hz; at least {MIN_SEGMENT_SECONDS})")
    g.add_argument("--val-items", type=_positive_int, default=200,
                   help="fixed validation mixtures (the same at every evaluation)")
    g.add_argument("--test-items", type=_positive_int, default=500,
                   help="fixed test mixtures for the final table")
    g.add_argument("--num-workers", type=_workers, default="auto",
                   help="DataLoader worker processes mixing batches in the background "
                        "(with prefetch and, on GPU, pinned memory); auto: the CPU cores "
                        "this rank's torch threads leave free on a CPU run, cores per rank "
                        "minus one (at most 8) on a GPU run")

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["auto"] + sorted(MODEL_CONFIGS), default="auto",
                   help="named SuDoRM-RF configuration; auto: sudormrf-0.25x on a GPU, "
                        "sudormrf-tiny on a CPU (so the default run takes minutes, not hours)")

    g = p.add_argument_group("loss and weighting")
    g.add_argument("--fused", action="store_true",
                   help="use the fused loss (ugr_kernels backend auto: C++ on CPU, Triton/CUDA "
                        "on GPU) instead of the textbook unfused loss (pairwise SI-SDR over "
                        "time in torch autograd, in the input dtype)")
    g.add_argument("--backend", default=None, choices=LOSS_BACKENDS,
                   help="loss backend; overrides --fused. unfused: the textbook torch loss; "
                        "others: ugr_kernels backends (reference = its float64 oracle)")
    g.add_argument("--weighting", type=_weightings, default=["uniform"],
                   help="scheme(s) giving the score F, combined with '+': "
                        f"{', '.join(WEIGHTINGS)}. "
                        "robust: F=alpha*L; curriculum: F=beta(step)*L; class: F=gamma[class]; "
                        "temperature: the authors' F=L/T with T=max(2, 20-(epoch+1))")
    g.add_argument("--alpha", type=_finite_float, default=0.1,
                   help="robust weighting coefficient (paper: 1/15, 1/10, 1/5)")
    g.add_argument("--beta-start", type=_finite_float, default=-0.2,
                   help="curriculum coefficient at the start (< 0 favours easy examples)")
    g.add_argument("--beta-end", type=_finite_float, default=0.0,
                   help="curriculum coefficient at the end of the schedule (0 = uniform)")
    g.add_argument("--beta-schedule", choices=SCHEDULE_KINDS, default="linear",
                   help="how beta moves from start to end")
    g.add_argument("--beta-steps", type=_positive_int, default=None,
                   help="schedule length in --schedule-unit units (default: half the training)")
    g.add_argument("--schedule-unit", choices=("step", "epoch"), default="step",
                   help="counter the curriculum/temperature schedules read")
    g.add_argument("--gamma", type=_gammas, default=None,
                   help="class biases for --weighting class, e.g. speech=3,env=0")
    g.add_argument("--granularity", choices=("source", "example"), default="source",
                   help="pmf over (example, source) pairs after PIT, or over mixtures")
    g.add_argument("--clamp-db", type=_positive_float, default=None,
                   help="soft upper bound of the SI-SDR in the loss (SNR_max), in dB (> 0)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=_positive_int, default=300, help="optimizer steps in total")
    g.add_argument("--batch-size", type=_positive_int, default=4,
                   help="global batch size (split over torchrun ranks; paper: 28)")
    g.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    g.add_argument("--clip-grad", type=_finite_float, default=5.0,
                   help="gradient-norm clip applied after backward (<= 0 disables)")
    g.add_argument("--epoch-steps", type=_positive_int, default=100,
                   help="steps that make one 'epoch' (online mixing has no natural epoch)")
    g.add_argument("--lr-decay-every", type=_non_negative_int, default=0,
                   help="divide the learning rate every this many epochs (0 = never)")
    g.add_argument("--lr-decay-factor", type=_positive_float, default=3.0,
                   help="divisor of the learning-rate decay")
    g.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seed of the model init and training mixtures")

    g = p.add_argument_group("evaluation, logging, checkpoints")
    g.add_argument("--run-dir", default="runs/default",
                   help="folder for config.json, metrics.jsonl, checkpoint.pt and results")
    g.add_argument("--eval-every", type=_non_negative_int, default=100,
                   help="validate every this many steps (0 = only at the end)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=8,
                   help="batch size of evaluation")
    g.add_argument("--log-every", type=_positive_int, default=10,
                   help="write a metrics line every N steps")
    g.add_argument("--checkpoint-every", type=_non_negative_int, default=100,
                   help="save the checkpoint every N steps (0 = only at the end / on Ctrl-C)")
    g.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/checkpoint.pt exactly where it stopped")
    g.add_argument("--no-test", action="store_true", help="skip the final test-set evaluation")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    g = p.add_argument_group("hardware")
    g.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch")
    g.add_argument("--amp", action="store_true", help="bf16 autocast for the model on GPU")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (model forward + loss; the backward "
                        "is compiled with it) for static shapes, fullgraph in one process")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="with --compile on CUDA: replay the step as CUDA graphs "
                        "(mode='reduce-overhead'); shapes are static, so this is safe")
    g.add_argument("--debug", action="store_true",
                   help="show the full traceback of data/checkpoint errors (also UGR_DEBUG=1)")
    return p


def parse_args(argv=None) -> RunConfig:
    """The command line as a typed, checked ``RunConfig`` (argparse errors exit with 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if "class" in args.weighting and not args.gamma:
        parser.error("--weighting class needs --gamma, e.g. --gamma speech=3,env=0")
    if args.data_csv and args.data_dir:
        parser.error("give either --data-dir or --data-csv, not both")
    if args.cuda_graphs and not args.compile:
        parser.error("--cuda-graphs needs --compile")
    return RunConfig.from_args(args)
