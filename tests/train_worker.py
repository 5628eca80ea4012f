"""``python tests/train_worker.py [--nan-at RANK:STEP] [--sigint-at RANK:STEP] TRAIN-ARGS``.

``python -m train`` with faults injected on one rank, for the distributed tests:
``--nan-at`` makes that rank's model output NaN at that step (a non-finite loss
and gradient on one rank only); ``--sigint-at`` sends that rank a Ctrl-C at
that step. Run it alone or under ``torchrun``.
"""
import math
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import parse_args  # noqa: E402
from train.loop import Trainer  # noqa: E402


def main(argv):
    faults = {}
    while argv and argv[0] in ("--nan-at", "--sigint-at"):
        faults[argv[0]] = tuple(int(x) for x in argv[1].split(":"))
        argv = argv[2:]
    trainer = Trainer(parse_args(argv))
    step_fn = trainer.train_step_fn
    real_forward = step_fn.forward
    here = lambda flag: faults.get(flag) == (trainer.dist.rank, trainer.step)  # noqa: E731

    def forward(mix):
        out = real_forward(mix)
        if here("--sigint-at"):
            os.kill(os.getpid(), signal.SIGINT)
        return out * math.nan if here("--nan-at") else out

    step_fn.forward = forward
    trainer.run()


if __name__ == "__main__":
    main(sys.argv[1:])
