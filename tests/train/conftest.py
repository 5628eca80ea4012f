"""Shared by the tests of ``train``: the one multi-process harness (``torchrun``)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "train_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def torchrun():
    """``torchrun(*args, nproc=2, worker=False)``: ``python -m train ARGS`` (or, with
    ``worker=True``, ``tests/train/train_worker.py ARGS``, which injects faults) under
    ``torch.distributed.run`` with ``nproc`` processes (gloo on a CPU), one thread each,
    on a free port, from the repository root. Returns the finished ``CompletedProcess``."""
    def run(*args, nproc=2, worker=False, timeout=300, env=None):
        target = [str(WORKER)] if worker else ["-m", "train"]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", *target, *map(str, args)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=env or dict(os.environ, OMP_NUM_THREADS="1"))
    return run


def write_premixed(root: Path, data_dir: Path, num_sources: int, rows: int = 4,
                   noise: bool = False, seconds=(0.6, 0.8), absolute_split: str = "tt"):
    """A small pre-mixed data set made of real ESC-50 clips, in both layouts at once:
    the wsj0-mix folders ``root/{tr,cv,tt}/{mix,s1..sS[,noise]}/NAME.wav`` and
    LibriMix-format manifests ``root/{tr,cv,tt}.csv`` (relative paths; absolute ones in
    ``absolute_split``; a ``noise_path`` column with ``noise``). Items of each split
    alternate between the lengths in ``seconds``. Returns ``root``."""
    import csv

    import numpy as np
    import soundfile as sf

    from train.data.audio import read_audio

    meta = list(csv.DictReader(open(data_dir / "esc50" / "meta.csv")))
    by_class: dict = {}
    for row in meta:
        by_class.setdefault(row["category"], []).append(row["filename"])
    classes = sorted(by_class)
    rng = np.random.default_rng(0)
    k = num_sources + int(noise)
    for split in ("tr", "cv", "tt"):
        folders = [f"s{j + 1}" for j in range(num_sources)] + (["noise"] if noise else [])
        for d in ["mix"] + folders:
            (root / split / d).mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(rows):
            n = int(seconds[i % len(seconds)] * 8000)
            picked = rng.choice(len(classes), size=k, replace=False)
            parts = []
            for c in picked:
                files = by_class[classes[c]]
                x = read_audio(data_dir / "esc50" / files[int(rng.integers(len(files)))])
                energy = np.convolve(x.astype(np.float64) ** 2, np.ones(n), "valid")
                at = int(np.argmax(energy))
                y = x[at:at + n].astype(np.float32)
                parts.append(0.3 * y / max(float(np.abs(y).max()), 1e-6))
            mix = np.sum(parts, axis=0).astype(np.float32)
            name = f"{split}_{i:03d}.wav"
            sf.write(root / split / "mix" / name, mix, 8000, subtype="FLOAT")
            for d, y in zip(folders, parts):
                sf.write(root / split / d / name, y, 8000, subtype="FLOAT")
            base = (root.resolve() / split) if split == absolute_split else Path(split)
            row = {"mixture_ID": name[:-4], "mixture_path": str(base / "mix" / name)}
            row.update({f"source_{j + 1}_path": str(base / f"s{j + 1}" / name)
                        for j in range(num_sources)})
            if noise:
                row["noise_path"] = str(base / "noise" / name)
            row["length"] = n
            lines.append(row)
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(lines[0]))
            w.writeheader()
            w.writerows(lines)
    return root
