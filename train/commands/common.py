"""The convention every command line of ``train`` follows, written once.

* ``Parser``: argparse whose errors are one line too.
* Typed flags: ``number`` builds argparse types that reject what is not finite or out
  of range; argparse names the flag in its message (``argument --lr: ...``).
* Shared flags: ``add_machine_flags`` defines ``--device``, ``--threads``,
  ``--no-progress`` and ``--debug`` for every command that runs a model
  (``add_debug_flag`` the last one alone).
* One way to fail: ``run_command`` turns a problem with the user's flags or files
  (``USER_ERRORS``) into one line on stderr, ``error: <message naming the flag or
  file>``, and exit code ``EXIT_USAGE`` (2, argparse's own code for a bad flag);
  ``--debug`` (or ``UGR_DEBUG=1``) shows the traceback instead. A run stopped by
  Ctrl-C exits with ``EXIT_INTERRUPTED`` (130) after saving its checkpoint.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable

import torch

from ..run.trainer import RunInterrupted

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Problems with the user's files, flags, checkpoints or installation: the message says it
# all (AudioFileError and RunFolderError are ValueErrors; a missing file is an OSError; a
# missing optional package, e.g. soxr for resampling, a ModuleNotFoundError).
USER_ERRORS = (ValueError, OSError, ModuleNotFoundError)


class Parser(argparse.ArgumentParser):
    """argparse with the package's failure line: ``error: argument --flag: ...``, exit 2."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def number(kind, lowest=None, strict=False, what=None):
    """An argparse type: a finite ``kind`` (int/float), > lowest (strict) or >= lowest.

    argparse prefixes the message with the flag (``argument --lr: ...``), so every
    rejection names the flag it came from. The type also takes a value already of
    ``kind`` (from a ``--config`` file) and checks it the same way.
    """
    if what is None:
        noun = "integer" if kind is int else "finite number"
        what = (f"a {noun}" if lowest is None
                else f"a {'positive' if strict else 'non-negative'} {noun}")

    def parse(text):
        if isinstance(text, bool) or (kind is int and isinstance(text, float)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} (not finite)")
        if lowest is not None and (value < lowest or (strict and value == lowest)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


positive_int = number(int, 0, strict=True)
non_negative_int = number(int, 0)
positive_float = number(float, 0.0, strict=True)
finite_float = number(float)


def device_name(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:1`` ...: a name torch understands."""
    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda or "
                                         f"cuda:1, got {text!r}") from None
    return text


def add_machine_flags(parser: argparse.ArgumentParser, group_title: str = "hardware"):
    """``--device``, ``--threads``, ``--no-progress``, ``--debug``: the same everywhere."""
    g = parser.add_argument_group(group_title)
    g.add_argument("--device", type=device_name, default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(g)
    return g


def add_debug_flag(parser) -> None:
    """``--debug``: every command has it (``add_machine_flags`` includes it)."""
    parser.add_argument("--debug", action="store_true",
                        help="on a bad flag or file, show the full traceback instead of one "
                             "line (also UGR_DEBUG=1)")


def pick_device(requested) -> torch.device:
    """The device of ``--device``, else cuda when available, else the CPU."""
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def set_threads(threads) -> None:
    if threads:
        torch.set_num_threads(threads)


def debugging(debug: bool = False) -> bool:
    return debug or os.environ.get("UGR_DEBUG", "") not in ("", "0")


def run_command(body: Callable[[], object], debug: bool = False):
    """Run a command's body with the one failure convention (see the module docstring)."""
    try:
        return body()
    except RunInterrupted:
        sys.exit(EXIT_INTERRUPTED)
    except USER_ERRORS as exc:
        if debugging(debug):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
