"""``python -m train.separate RUN_DIR_OR_CHECKPOINT AUDIO... --out-dir DIR``.

Separates recordings with a trained model (``train.evaluation.separation``) and writes
``<name>_s1.wav ... <name>_sC.wav`` per input. Every input is checked before any work.
"""
from __future__ import annotations

from pathlib import Path

from ..data.audio import SAMPLE_RATE
from ..evaluation.separation import (
    DEFAULT_OVERLAP_FRACTION,
    MIN_SECONDS,
    PROGRESS_MIN_CHUNKS,
    check_input,
    separate_file,
    write_sources,
)
from ..run.config import RunConfig
from ..run_folder import load_trained
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
_seconds = number(float, 0.0, strict=True, what="a positive number of seconds")


def build_parser() -> Parser:
    p = Parser(
        prog="python -m train.separate",
        description="Separate recordings with a model trained by python -m train. Reads any "
                    "file soundfile can (WAV, FLAC, OGG, ...; several channels are averaged "
                    "to mono), resamples it to the model's 8 kHz with soxr, separates it in "
                    "overlapping chunks (sources matched between chunks over the overlap, "
                    "then linearly cross-faded), resamples back and writes "
                    "OUT_DIR/<name>_s1.wav ... <name>_sC.wav (32-bit float WAV at the "
                    "input's rate, exactly as long as the input).")
    p.add_argument("run", help="run folder written by python -m train, or its checkpoint.pt")
    p.add_argument("audio", nargs="+", help=f"audio files to separate (at least {MIN_SECONDS} s)")
    p.add_argument("--out-dir", required=True, help="folder for the separated sources")
    p.add_argument("--chunk-seconds", type=_seconds, default=None,
                   help="length of the chunks the model sees at once (default: the run's "
                        "--segment-seconds, the length it was trained on); a file no longer "
                        "than one chunk is separated in one call")
    p.add_argument("--overlap-seconds", type=_seconds, default=None,
                   help=f"overlap of consecutive chunks, at most half a chunk (default: "
                        f"{DEFAULT_OVERLAP_FRACTION:g} of a chunk)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="chunks per model call")
    g = add_machine_flags(p)
    g.description = f"a progress bar is shown for inputs of {PROGRESS_MIN_CHUNKS}+ chunks"
    return p


def main(argv=None) -> list[Path]:
    """``python -m train.separate``; a bad flag or file stops it with one line (exit 2)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _separate(args), debug=args.debug)


def _separate(args) -> list[Path]:
    set_threads(args.threads)
    paths = [Path(a) for a in args.audio]
    for path in paths:           # every input is checked before any work
        check_input(path)
    names = [p.stem for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"several inputs are named {dup[0]!r}: their outputs would "
                         f"overwrite each other")
    device = pick_device(args.device)
    model, run = load_trained(args.run, device)
    chunk_s = args.chunk_seconds or float(run.get("segment_seconds", DEFAULTS.segment_seconds))
    overlap_s = args.overlap_seconds if args.overlap_seconds is not None \
        else DEFAULT_OVERLAP_FRACTION * chunk_s
    chunk = int(round(chunk_s * SAMPLE_RATE))
    overlap = int(round(overlap_s * SAMPLE_RATE))
    if chunk < 2 or not 1 <= overlap <= chunk // 2:
        raise ValueError(f"need --chunk-seconds > 0 and 0 < --overlap-seconds <= half a chunk; "
                         f"got chunk {chunk_s:g} s, overlap {overlap_s:g} s")
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create --out-dir {out_dir} ({exc.strerror})") from None
    print(f"model {run['model']} (step {run['checkpoint_step']}) on {device}; "
          f"chunks of {chunk / SAMPLE_RATE:g} s overlapping by {overlap / SAMPLE_RATE:g} s")
    written = []
    for path in paths:
        sources, rate, note = separate_file(
            model, path, chunk=chunk, overlap=overlap, batch_size=args.batch_size,
            device=device, show_progress=not args.no_progress)
        files = write_sources(sources, rate, out_dir, path.stem)
        written += files
        print(f"{path}: {sources.shape[1] / rate:.2f} s at {rate} Hz, {note} -> "
              f"{', '.join(f.name for f in files)}")
    return written
