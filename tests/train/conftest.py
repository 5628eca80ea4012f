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
