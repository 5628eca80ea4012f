"""The typed configuration of one run, and the one place its defaults live.

``RunConfig()`` holds every default (the command line reads them from here);
``RunConfig.from_args`` turns argparse's namespace into the frozen dataclass and
``to_file_dict`` is what a run folder's ``config.json`` stores, which
``python -m train --config`` reads back. ``resolve(device)`` fills in everything
that depends on the machine (model, loss backend, worker count) so the rest of the
trainer reads settled values and never mutates the configuration. The weighting
scheme and the learning rate are ``ugr_kernels`` schedules built here, in one place.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

import ugr_kernels as uk

from ..data.audio import SAMPLE_RATE

WEIGHTINGS = ("uniform", "robust", "curriculum", "class", "temperature")
SCHEDULE_KINDS = ("constant", "linear", "cosine", "exponential", "step")
LR_SCHEDULES = ("step", "plateau")
TEST_ON = ("best", "last")
LOSS_BACKENDS = ("unfused", "auto", "torch", "cpp", "triton", "cuda", "reference")
MIN_SEGMENT_SECONDS = 0.1  # shorter mixtures are a handful of encoder frames: nothing to learn

# How a run is invoked, not what it is: left out of config.json, so that a run's
# config.json re-runs it from the start (resume with --resume, on the command line).
INVOCATION_FIELDS = ("resume", "debug")


@dataclass(frozen=True)
class RunConfig:
    # data
    data_dir: Optional[str] = None
    data_csv: Optional[str] = None
    task: str = "env"
    num_sources: Optional[int] = None     # None: from pre-mixed data, else 2 (config.json: S)
    train_manifest: Optional[str] = None  # pre-mixed data (train.data.premixed)
    val_manifest: Optional[str] = None
    test_manifest: Optional[str] = None
    wsj0_mix_dir: Optional[str] = None
    keep_noise: bool = False
    segment_seconds: float = 4.0
    val_items: int = 200
    test_items: int = 500
    num_workers: object = "auto"          # "auto" until resolved, then an int
    # model
    model: str = "auto"
    # loss and weighting
    fused: bool = False
    backend: Optional[str] = None         # None until resolved, then a loss backend name
    weighting: tuple = ("uniform",)
    alpha: float = 0.1
    beta_start: float = -0.2
    beta_end: float = 0.0
    beta_schedule: str = "linear"
    beta_steps: Optional[int] = None
    schedule_unit: str = "step"
    gamma: Optional[dict] = None
    granularity: str = "source"
    clamp_db: Optional[float] = None
    # optimisation
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    clip_grad: float = 5.0
    epoch_steps: int = 100
    lr_decay_every: int = 0
    lr_decay_factor: float = 3.0
    lr_schedule: str = "step"             # step decay (--lr-decay-every) or plateau
    plateau_factor: float = 0.5           # Asteroid's recipe: halve after 5 flat validations
    plateau_patience: int = 5
    min_lr: float = 0.0
    early_stop: int = 0                   # validations without improvement; 0 = never stop
    seed: int = 0
    # evaluation, logging, checkpoints
    run_dir: str = "runs/default"
    eval_every: int = 100
    eval_batch_size: int = 8
    log_every: int = 10
    checkpoint_every: int = 100
    resume: bool = False
    no_test: bool = False
    test_on: str = "best"
    ess_warn: float = 0.1                 # warn once when a window's pmf ESS stays below this
    no_progress: bool = False
    # hardware
    device: Optional[str] = None
    threads: Optional[int] = None
    amp: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    debug: bool = False
    resolved: bool = field(default=False, compare=False)

    @classmethod
    def option_names(cls) -> list[str]:
        """The fields a user sets (all but the ``resolved`` marker)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "resolved"]

    @classmethod
    def from_args(cls, ns) -> "RunConfig":
        known = set(cls.option_names())
        values = {k: v for k, v in vars(ns).items() if k in known}
        values["weighting"] = tuple(values.get("weighting", ("uniform",)))
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_file_dict(self) -> dict:
        """The content of ``config.json``: every option but ``INVOCATION_FIELDS``."""
        values = self.to_dict()
        return {k: values[k] for k in self.option_names() if k not in INVOCATION_FIELDS}

    # ----------------------------------------------------------------- derived values
    @property
    def segment_len(self) -> int:
        return int(round(self.segment_seconds * SAMPLE_RATE))

    def epoch(self, step: int) -> int:
        return step // self.epoch_steps

    def resolve(self, device: torch.device, ranks_per_node: int = 1) -> "RunConfig":
        """The same configuration with model, loss backend and workers settled for ``device``."""
        if self.cuda_graphs and (device.type != "cuda" or not self.compile):
            raise ValueError("--cuda-graphs needs --compile and a CUDA device")
        model = self.model
        if model == "auto":
            model = "sudormrf-0.25x" if device.type == "cuda" else "sudormrf-tiny"
        backend = self.backend or ("auto" if self.fused else "unfused")
        if backend == "auto":        # name the kernels that will run (header, config.json)
            backend = uk.backends.resolve("auto", device.type)
        workers = self.num_workers
        if workers == "auto":
            workers = auto_workers(device, self.threads or torch.get_num_threads(), ranks_per_node)
        return dataclasses.replace(self, model=model, backend=backend, num_workers=int(workers),
                                   device=str(device), resolved=True)

    def weighting_scheme(self, class_names) -> uk.Weighting:
        """The ``ugr_kernels`` weighting for ``--weighting`` (schemes added with '+')."""
        total = None
        for name in self.weighting:
            if name == "uniform":
                w = uk.Uniform()
            elif name == "robust":
                w = uk.Robust(self.alpha)
            elif name == "curriculum":
                w = uk.Curriculum(self.beta_schedule_object())
            elif name == "temperature":
                w = uk.Robust(uk.InverseTemperature(unit=self.schedule_unit))
            else:  # class
                unknown = [k for k in self.gamma if k not in class_names]
                if unknown:
                    raise ValueError(f"--gamma names unknown classes {unknown}; this task's "
                                     f"classes are {list(class_names)[:20]}")
                # Labels are validated once when the data is built (data.loader.check_labels).
                w = uk.ClassBias(self.gamma, class_names=list(class_names), check_labels=False)
            total = w if total is None else total + w
        return total

    def beta_schedule_object(self) -> uk.Schedule:
        """The curriculum coefficient beta as a ``ugr_kernels`` schedule."""
        unit = self.schedule_unit
        duration = self.beta_steps
        if duration is None:  # half the training, in the schedule's unit
            span = self.steps // self.epoch_steps if unit == "epoch" else self.steps
            duration = max(1, span // 2)
        start, end, kind = self.beta_start, self.beta_end, self.beta_schedule
        if kind == "constant":
            return uk.Constant(start, unit=unit)
        if kind == "exponential":  # a quarter of the duration per halving
            return uk.Exponential(start, end, duration / 4, unit=unit)
        if kind == "step":
            return uk.Step([start, end], [duration], unit=unit)
        if kind == "cosine":
            return uk.Cosine(start, end, duration, unit=unit)
        return uk.Linear(start, end, duration, unit=unit)

    def step_decay(self) -> uk.Schedule:
        """``lr / factor ** (epoch // every)`` as a piecewise-constant schedule over epochs."""
        if self.lr_decay_every <= 0:
            return uk.Constant(self.lr, unit="epoch")
        decays = self.epoch(max(self.steps - 1, 0)) // self.lr_decay_every
        values = [self.lr / self.lr_decay_factor ** k for k in range(decays + 1)]
        bounds = [self.lr_decay_every * k for k in range(1, decays + 1)]
        return uk.Step(values, bounds, unit="epoch")


def auto_workers(device: torch.device, threads: int, ranks_per_node: int = 1) -> int:
    """Loader workers for ``--num-workers auto``.

    On a GPU the host only feeds the device, so mixing gets the cores of this rank
    but one (at most 8). On a CPU the model's own threads are busy with the step:
    a worker only helps on cores those threads leave free.
    """
    cores = max(1, (os.cpu_count() or 1) // max(1, ranks_per_node))
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return max(0, min(4, cores - threads))
