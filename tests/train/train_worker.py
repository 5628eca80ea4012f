"""``python tests/train/train_worker.py [--nan-at RANK:STEP] [--sigint-at RANK:STEP] TRAIN-ARGS``.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.commands.common import run_command  # noqa: E402
from train.commands.train import parse_args  # noqa: E402
from train.run.trainer import Trainer  # noqa: E402


def main(argv):
    faults = {}
    while argv and argv[0] in ("--nan-at", "--sigint-at"):
        faults[argv[0]] = tuple(int(x) for x in argv[1].split(":"))
        argv = argv[2:]
    trainer = Trainer(parse_args(argv))
    step = trainer.device_step
    real_model = step.model
    here = lambda flag: faults.get(flag) == (trainer.dist.rank, trainer.step)  # noqa: E731

    def forward(mix):
        out = real_model(mix)
        if here("--sigint-at"):
            os.kill(os.getpid(), signal.SIGINT)
        return out * math.nan if here("--nan-at") else out

    step.model = forward
    run_command(trainer.run)


if __name__ == "__main__":
    main(sys.argv[1:])
