"""``python -m train.report RUN_DIR [RUN_DIR ...]``: tables side by side and plots."""
from __future__ import annotations

from pathlib import Path

from ..evaluation.report import load_run, plot, tables
from .common import Parser, add_debug_flag, run_command


def build_parser() -> Parser:
    p = Parser(prog="python -m train.report",
               description="Compare training runs: paper-style tables (one row per run, and "
                           "per class) and plots (sisdri_hist.png, val_curves.png).")
    p.add_argument("runs", nargs="+", help="run folders written by python -m train")
    p.add_argument("--out", default=None,
                   help="folder for the PNG plots (default: the first run folder)")
    add_debug_flag(p)
    return p


def main(argv=None) -> list[Path]:
    """``python -m train.report``; a missing or damaged run folder stops it with one line."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _report(args), debug=args.debug)


def _report(args) -> list[Path]:
    runs = [load_run(Path(d)) for d in args.runs]
    print(tables(runs))
    saved = plot(runs, Path(args.out) if args.out else Path(args.runs[0]))
    for path in saved:
        print(f"saved {path}")
    return saved
