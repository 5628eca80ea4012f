"""``python -m train``: every flag, with what it does; ``--config FILE`` re-runs a run.

Defaults come from ``RunConfig`` (the one place they live). ``--config`` takes a JSON
file (or YAML, with PyYAML installed) of option names and values, such as a run
folder's own ``config.json``: its values replace the defaults, flags given on the
command line replace its values, and every value is checked by the flag's own type.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from model import MODEL_CONFIGS

from ..data.audio import SAMPLE_RATE
from ..data.mixing import MAX_SOURCES, TASKS
from ..run.config import (
    LOSS_BACKENDS,
    LR_SCHEDULES,
    MIN_SEGMENT_SECONDS,
    SCHEDULE_KINDS,
    TEST_ON,
    WEIGHTINGS,
    RunConfig,
)
from ..run.trainer import Trainer
from ..run_folder import read_config_file
from .common import (
    Parser,
    add_machine_flags,
    finite_float,
    non_negative_int,
    number,
    positive_float,
    positive_int,
    run_command,
)

DEFAULTS = RunConfig()
_segment_seconds = number(float, MIN_SEGMENT_SECONDS,
                          what=f"a finite number of seconds >= {MIN_SEGMENT_SECONDS}")


_num_sources = number(int, 1, what=f"an integer from 1 to {MAX_SOURCES}")


def _checked_sources(value):
    n = _num_sources(value)
    if n > MAX_SOURCES:
        raise argparse.ArgumentTypeError(f"at most {MAX_SOURCES} sources, got {n}")
    return n


_factor = number(float, 0.0, strict=True, what="a factor between 0 and 1 (exclusive)")
non_negative_float = number(float, 0.0)


def _factor_below_one(value):
    out = _factor(value)
    if out >= 1:
        raise argparse.ArgumentTypeError(f"expected a factor between 0 and 1 (exclusive), "
                                         f"got {out}")
    return out


def _workers(value):
    """``auto`` or a non-negative integer."""
    return "auto" if value == "auto" else non_negative_int(value)


def _gammas(value) -> dict[str, float]:
    """``speech=3,env=0`` (or, from a config file, a mapping) -> {"speech": 3.0, "env": 0.0}."""
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        pairs = []
        for part in filter(None, (p.strip() for p in str(value).split(","))):
            name, sep, number_text = part.partition("=")
            if not sep or not name:
                raise argparse.ArgumentTypeError(
                    f"expected CLASS=GAMMA pairs like speech=3,env=0, got {part!r}")
            pairs.append((name.strip(), number_text))
    out = {}
    for name, v in pairs:
        try:
            out[name] = float(v)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"gamma for {name!r} is not a number: {v!r}") \
                from None
        if not math.isfinite(out[name]):
            raise argparse.ArgumentTypeError(f"gamma for {name!r} must be finite, got {v!r}")
    if not out:
        raise argparse.ArgumentTypeError("expected at least one CLASS=GAMMA pair")
    return out


def _weightings(value) -> list[str]:
    """``robust+class`` (or, from a config file, a list of names)."""
    parts = list(value) if isinstance(value, (list, tuple)) else \
        [p.strip() for p in str(value).split("+") if p.strip()]
    bad = [p for p in parts if p not in WEIGHTINGS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"unknown weighting {bad or value!r}; choose from {', '.join(WEIGHTINGS)} "
            f"(combine with '+', e.g. robust+class)")
    return parts


def build_parser() -> argparse.ArgumentParser:
    D = DEFAULTS
    p = Parser(
        prog="python -m train",
        description="Train SuDoRM-RF with unified gradient reweighting (weighted PIT SI-SDRi). "
                    "Without --data-dir it trains on embedded synthetic speech-like and "
                    "environmental-like sources; select real audio with --data-dir.")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="options from a JSON (or YAML) file, e.g. a run's own config.json; "
                        "flags given here override it")

    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=D.data_dir,
                   help="folder laid out like shared/data (esc50/meta.csv, speech/meta.csv). "
                        "Default: embedded synthetic data")
    g.add_argument("--data-csv", default=D.data_csv,
                   help="your own sources: a CSV with columns filename,label[,split] (paths "
                        "relative to the CSV's folder); used as the 'env' (or 'speech' for "
                        "--task speech) catalogue instead of --data-dir")
    g.add_argument("--task", choices=TASKS, default=D.task,
                   help="env: two environmental sounds; speech: two speakers; mixed: one "
                        "speech + one environmental source (classes 'speech', 'env')")
    g.add_argument("--num-sources", type=_checked_sources, default=D.num_sources,
                   help=f"sources per mixture, 1 to {MAX_SOURCES} (online mixing draws them "
                        f"of different classes, or speakers); default: the pre-mixed data's "
                        f"own count, else 2")
    g.add_argument("--train-manifest", default=D.train_manifest, metavar="CSV",
                   help="pre-mixed training data: a LibriMix-format metadata CSV "
                        "(mixture_ID, mixture_path, source_1_path ... source_S_path, length; "
                        "paths absolute or relative to the CSV's folder); needs "
                        "--val-manifest and --test-manifest (or --no-test) too. The mixture "
                        "is as given (no remixing, no level randomisation); training takes "
                        "random crops of --segment-seconds, val/test whole items")
    g.add_argument("--val-manifest", default=D.val_manifest, metavar="CSV",
                   help="pre-mixed validation data (the first --val-items rows)")
    g.add_argument("--test-manifest", default=D.test_manifest, metavar="CSV",
                   help="pre-mixed test data (the first --test-items rows)")
    g.add_argument("--wsj0-mix-dir", default=D.wsj0_mix_dir, metavar="DIR",
                   help="pre-mixed data in the wsj0-2mix/3mix layout: DIR/tr, cv, tt (train, "
                        "val, test), each with mix/ s1/ ... sS/ holding files of the same names")
    g.add_argument("--keep-noise", action="store_true",
                   help="pre-mixed data with noise (a manifest's noise_path column, WHAM!-style, "
                        "or a noise/ folder): keep the noise as the last source (class 'noise') "
                        "instead of leaving it out")
    g.add_argument("--segment-seconds", type=_segment_seconds, default=D.segment_seconds,
                   help=f"length of each training/evaluation mixture in seconds (at "
                        f"{SAMPLE_RATE} Hz; at least {MIN_SEGMENT_SECONDS}); pre-mixed data: "
                        f"the training crops (evaluation uses whole items)")
    g.add_argument("--val-items", type=positive_int, default=D.val_items,
                   help="fixed validation mixtures (the same at every evaluation)")
    g.add_argument("--test-items", type=positive_int, default=D.test_items,
                   help="fixed test mixtures for the final table")
    g.add_argument("--num-workers", type=_workers, default=D.num_workers,
                   help="DataLoader worker processes mixing batches in the background "
                        "(with prefetch and, on GPU, pinned memory); auto: the CPU cores "
                        "this rank's torch threads leave free on a CPU run, cores per rank "
                        "minus one (at most 8) on a GPU run")

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["auto"] + sorted(MODEL_CONFIGS), default=D.model,
                   help="named SuDoRM-RF configuration; auto: sudormrf-0.25x on a GPU, "
                        "sudormrf-tiny on a CPU (so the default run takes minutes, not hours)")

    g = p.add_argument_group("loss and weighting")
    g.add_argument("--fused", action="store_true",
                   help="use the fused loss (ugr_kernels backend auto: C++ on CPU, Triton/CUDA "
                        "on GPU) instead of the textbook unfused loss (pairwise SI-SDR over "
                        "time in torch autograd, in the input dtype)")
    g.add_argument("--backend", default=D.backend, choices=LOSS_BACKENDS,
                   help="loss backend; overrides --fused. unfused: the textbook torch loss; "
                        "others: ugr_kernels backends (reference = its float64 oracle)")
    g.add_argument("--weighting", type=_weightings, default=D.weighting,
                   help="scheme(s) giving the score F, combined with '+': "
                        f"{', '.join(WEIGHTINGS)}. "
                        "robust: F=alpha*L; curriculum: F=beta(step)*L; class: F=gamma[class]; "
                        "temperature: the authors' F=L/T with T=max(2, 20-(epoch+1))")
    g.add_argument("--alpha", type=finite_float, default=D.alpha,
                   help="robust weighting coefficient (paper: 1/15, 1/10, 1/5)")
    g.add_argument("--beta-start", type=finite_float, default=D.beta_start,
                   help="curriculum coefficient at the start (< 0 favours easy examples)")
    g.add_argument("--beta-end", type=finite_float, default=D.beta_end,
                   help="curriculum coefficient at the end of the schedule (0 = uniform)")
    g.add_argument("--beta-schedule", choices=SCHEDULE_KINDS, default=D.beta_schedule,
                   help="how beta moves from start to end")
    g.add_argument("--beta-steps", type=positive_int, default=D.beta_steps,
                   help="schedule length in --schedule-unit units (default: half the training)")
    g.add_argument("--schedule-unit", choices=("step", "epoch"), default=D.schedule_unit,
                   help="counter the curriculum/temperature schedules read")
    g.add_argument("--gamma", type=_gammas, default=D.gamma,
                   help="class biases for --weighting class, e.g. speech=3,env=0")
    g.add_argument("--granularity", choices=("source", "example"), default=D.granularity,
                   help="pmf over (example, source) pairs after PIT, or over mixtures")
    g.add_argument("--clamp-db", type=positive_float, default=D.clamp_db,
                   help="soft upper bound of the SI-SDR in the loss (SNR_max), in dB (> 0)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int, default=D.steps, help="optimizer steps in total")
    g.add_argument("--batch-size", type=positive_int, default=D.batch_size,
                   help="global batch size (split over torchrun ranks; paper: 28)")
    g.add_argument("--lr", type=positive_float, default=D.lr, help="Adam learning rate")
    g.add_argument("--clip-grad", type=finite_float, default=D.clip_grad,
                   help="gradient-norm clip applied after backward (<= 0 disables)")
    g.add_argument("--epoch-steps", type=positive_int, default=D.epoch_steps,
                   help="steps that make one 'epoch' (online mixing has no natural epoch)")
    g.add_argument("--lr-decay-every", type=non_negative_int, default=D.lr_decay_every,
                   help="divide the learning rate every this many epochs (0 = never)")
    g.add_argument("--lr-decay-factor", type=positive_float, default=D.lr_decay_factor,
                   help="divisor of the learning-rate decay")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=D.lr_schedule,
                   help="step: divide by --lr-decay-factor every --lr-decay-every epochs "
                        "(constant without it); plateau: multiply by --plateau-factor after "
                        "more than --plateau-patience validations without a better mean "
                        "SI-SDRi (ReduceLROnPlateau; Asteroid's recipe 0.5 and 5)")
    g.add_argument("--plateau-factor", type=_factor_below_one, default=D.plateau_factor,
                   help="--lr-schedule plateau: multiply the learning rate by this (0 < f < 1)")
    g.add_argument("--plateau-patience", type=non_negative_int, default=D.plateau_patience,
                   help="--lr-schedule plateau: validations without improvement tolerated")
    g.add_argument("--min-lr", type=non_negative_float, default=D.min_lr,
                   help="--lr-schedule plateau: the learning rate never goes below this")
    g.add_argument("--early-stop", type=non_negative_int, default=D.early_stop,
                   metavar="PATIENCE",
                   help="stop after this many validations in a row without a better mean "
                        "SI-SDRi (0 = never)")
    g.add_argument("--seed", type=non_negative_int, default=D.seed,
                   help="seed of the model init and training mixtures")

    g = p.add_argument_group("evaluation, logging, checkpoints")
    g.add_argument("--run-dir", default=D.run_dir,
                   help="folder for config.json, metrics.jsonl, checkpoint.pt and results")
    g.add_argument("--eval-every", type=non_negative_int, default=D.eval_every,
                   help="validate every this many steps (0 = only at the end)")
    g.add_argument("--eval-batch-size", type=positive_int, default=D.eval_batch_size,
                   help="batch size of evaluation")
    g.add_argument("--log-every", type=positive_int, default=D.log_every,
                   help="write a metrics line every N steps")
    g.add_argument("--checkpoint-every", type=non_negative_int, default=D.checkpoint_every,
                   help="save the checkpoint every N steps (0 = only at the end / on Ctrl-C)")
    g.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/checkpoint.pt exactly where it stopped")
    g.add_argument("--no-test", action="store_true", help="skip the final test-set evaluation")
    g.add_argument("--test-on", choices=TEST_ON, default=D.test_on,
                   help="the model the final test scores: best (best.pt, the best validation "
                        "mean SI-SDRi) or last (checkpoint.pt); results.json says which")
    g.add_argument("--ess-warn", type=non_negative_float, default=D.ess_warn,
                   help="warn once when the pmf's effective sample size (a fraction of the "
                        "items) stays below this for a whole logging window (0 = never)")

    g = add_machine_flags(p)
    g.add_argument("--amp", action="store_true", help="bf16 autocast for the model on GPU")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (model forward + loss; the backward "
                        "is compiled with it) for static shapes, fullgraph in one process")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="with --compile on CUDA: replay the step as CUDA graphs "
                        "(mode='reduce-overhead'); shapes are static, so this is safe")
    return p


def parse_args(argv=None) -> RunConfig:
    """The command line (and its ``--config`` file) as a typed, checked ``RunConfig``.

    A bad flag or file value exits with one line naming it (exit code 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        parser.set_defaults(**_file_values(parser, args.config))
        args = parser.parse_args(argv)
        if not args.resume and Path(args.run_dir).resolve() == \
                Path(args.config).resolve().parent:
            parser.error(f"--config {args.config} is the config of run folder {args.run_dir}: "
                         f"give a new --run-dir to run it again (or --resume to continue it)")
    if "class" in args.weighting and not args.gamma:
        parser.error("--weighting class needs --gamma, e.g. --gamma speech=3,env=0")
    if args.data_csv and args.data_dir:
        parser.error("give either --data-dir or --data-csv, not both")
    manifests = [f"--{s}-manifest" for s in ("train", "val", "test")
                 if getattr(args, f"{s}_manifest")]
    if manifests or args.wsj0_mix_dir:
        if args.data_dir or args.data_csv:
            parser.error(f"{manifests[0] if manifests else '--wsj0-mix-dir'} (pre-mixed data) "
                         f"replaces --data-dir/--data-csv: give one or the other")
        if manifests and args.wsj0_mix_dir:
            parser.error("give either --wsj0-mix-dir or the --*-manifest flags, not both")
        needed = ["--train-manifest", "--val-manifest"] + ([] if args.no_test
                                                          else ["--test-manifest"])
        absent = [f for f in needed if f not in manifests]
        if manifests and absent:
            parser.error(f"{absent[0]} is needed with {manifests[0]}")
    elif args.keep_noise:
        parser.error("--keep-noise applies to pre-mixed data (--*-manifest, --wsj0-mix-dir)")
    if args.lr_schedule == "plateau" and args.lr_decay_every:
        parser.error("--lr-decay-every belongs to --lr-schedule step; give one of the two")
    if args.cuda_graphs and not args.compile:
        parser.error("--cuda-graphs needs --compile")
    return RunConfig.from_args(args)


def _file_values(parser: argparse.ArgumentParser, path: str) -> dict:
    """The options of a config file, each checked by its flag's own type and choices."""
    try:
        values = read_config_file(path)
    except (OSError, ValueError) as exc:
        parser.error(f"--config: {exc}")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    options = set(RunConfig.option_names())
    out = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or key not in options:
            parser.error(f"{path}: unknown option {key!r} (the options are the long flags "
                         f"of python -m train, with '_' for '-')")
        try:
            out[key] = _file_value(action, value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            parser.error(f"{path}: {key} (--{key.replace('_', '-')}): {exc}")
    return out


def _file_value(action: argparse.Action, value):
    if action.nargs == 0:                                   # a store_true flag
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if value is None:
        if action.default is not None:
            raise TypeError("expected a value, got null")
        return None
    if action.type is not None:
        value = action.type(value)
    elif not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"invalid choice {value!r} (choose from "
                         f"{', '.join(map(str, action.choices))})")
    return value


def main(argv=None) -> dict:
    """``python -m train``: train, validate and test one run (see ``--help``)."""
    config = parse_args(argv)
    return run_command(lambda: Trainer(config).run(), debug=config.debug)
