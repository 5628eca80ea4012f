"""What a validation decides: the best model, a plateau learning rate, early stopping.

``ValidationControl`` sees each validation's mean SI-SDRi (higher is better) and keeps,
on the host, everything a resume needs (``state_dict``): the best value and its step,
the plateau schedule's learning rate and count of flat validations, and the validations
since the last improvement for ``--early-stop``.

The plateau rule is ``torch.optim.lr_scheduler.ReduceLROnPlateau``'s in ``mode="max"``
with ``threshold=0``: a validation improves when it is strictly above the best so far;
after more than ``patience`` validations in a row without one, the learning rate is
multiplied by ``factor`` (not below ``min_lr``) and the count starts again (Asteroid's
recipes: factor 0.5, patience 5). Early stopping ends the run once ``early_stop``
validations in a row have not improved on the best.
"""
from __future__ import annotations

import math

from .config import RunConfig

_EPS = 1e-8  # ReduceLROnPlateau's: a reduction smaller than this is not made


class ValidationControl:
    def __init__(self, config: RunConfig):
        self.plateau = config.lr_schedule == "plateau"
        self.factor = config.plateau_factor
        self.patience = config.plateau_patience
        self.min_lr = config.min_lr
        self.early_stop = config.early_stop
        self.lr = config.lr                 # the plateau schedule's current learning rate
        self.best = -math.inf               # best validation mean SI-SDRi
        self.best_step = None
        self.flat = 0                       # validations without improvement (plateau count)
        self.since_best = 0                 # the same, never reset by a reduction
        self.stopped = False                # early stopping ended the run

    def update(self, value: float, step: int) -> bool:
        """Take one validation's mean; return whether it is the new best."""
        improved = value > self.best        # False for NaN
        if improved:
            self.best, self.best_step = float(value), int(step)
            self.flat = self.since_best = 0
        else:
            self.flat += 1
            self.since_best += 1
        if self.plateau and self.flat > self.patience:
            new = max(self.lr * self.factor, self.min_lr)
            if self.lr - new > _EPS:
                self.lr = new
            self.flat = 0
        if self.early_stop and self.since_best >= self.early_stop:
            self.stopped = True
        return improved

    def state_dict(self) -> dict:
        return {"lr": self.lr, "best": self.best, "best_step": self.best_step,
                "flat": self.flat, "since_best": self.since_best, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.lr = float(state["lr"])
        self.best = float(state["best"])
        self.best_step = state["best_step"]
        self.flat = int(state["flat"])
        self.since_best = int(state["since_best"])
        self.stopped = bool(state["stopped"])
