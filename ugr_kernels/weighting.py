"""Weighting schemes (what F is) and schedules (how a coefficient moves with training).

A scheme turns the training state into the score ``F`` of ``weighted_sisdr``:

======================  ==============================  ==========================
scheme                  F per item                      use
======================  ==============================  ==========================
``Uniform()``           0                               plain mean loss
``Robust(alpha)``       ``alpha * L``                   alpha > 0: hard examples
``Curriculum(beta)``    ``beta(step) * L``              beta < 0 -> 0: easy first
``ClassBias(gammas)``   ``gamma[label]``                favour chosen classes
``Custom(fn)``          ``fn(L, step=, epoch=, labels=)``  anything else
======================  ==============================  ==========================

Schemes add: ``Robust(0.1) + ClassBias({"speech": 3})`` has F = 0.1 L + gamma.

Schedules check their parameters once, at construction (``ValueError`` for NaN/inf), and
are plain Python arithmetic on the step: under ``torch.compile`` a changing ``step``
becomes a symbolic int at the first recompile, so ``Constant``, ``Linear``, ``Cosine``,
``Exponential`` and ``InverseTemperature`` compile at most twice in all, with no graph
break; ``Step`` picks its value by comparisons and so recompiles once more at each
boundary it crosses.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor


# --------------------------------------------------------------------------- schedules
class Schedule:
    """A value as a function of training time ``t`` (steps or epochs, see ``unit``)."""

    unit: str = "step"

    def __call__(self, t: float) -> float:
        raise NotImplementedError

    def at(self, step: int = 0, epoch: int = 0) -> float:
        """The value at this training position, reading the counter named by ``unit``."""
        return float(self(epoch if self.unit == "epoch" else step))


def _require_finite(owner: str, **values) -> None:
    """A NaN/inf coefficient would make every score F non-finite: nothing would train."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value):
            raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")


def _progress(t: float, duration: float) -> float:
    return 1.0 if duration <= 0 else min(max(t / duration, 0.0), 1.0)


@dataclass
class Constant(Schedule):
    value: float
    unit: str = "step"

    def __post_init__(self):
        _require_finite("Constant", value=self.value)

    def __call__(self, t):
        return self.value


@dataclass
class Linear(Schedule):
    """``start`` at t=0 to ``end`` at t=``duration``, constant after."""
    start: float
    end: float
    duration: float
    unit: str = "step"

    def __post_init__(self):
        _require_finite("Linear", start=self.start, end=self.end, duration=self.duration)

    def __call__(self, t):
        return self.start + (self.end - self.start) * _progress(t, self.duration)


@dataclass
class Cosine(Schedule):
    """Half-cosine from ``start`` to ``end`` over ``duration``."""
    start: float
    end: float
    duration: float
    unit: str = "step"

    def __post_init__(self):
        _require_finite("Cosine", start=self.start, end=self.end, duration=self.duration)

    def __call__(self, t):
        w = 0.5 * (1.0 - math.cos(math.pi * _progress(t, self.duration)))
        return self.start + (self.end - self.start) * w


@dataclass
class Exponential(Schedule):
    """``end + (start - end) * 0.5 ** (t / half_life)``: decays towards ``end``."""
    start: float
    end: float
    half_life: float
    unit: str = "step"

    def __post_init__(self):
        _require_finite("Exponential", start=self.start, end=self.end, half_life=self.half_life)
        if self.half_life <= 0:
            raise ValueError(f"Exponential: half_life must be > 0, got {self.half_life}")

    def __call__(self, t):
        return self.end + (self.start - self.end) * 0.5 ** (max(t, 0.0) / self.half_life)


@dataclass
class Step(Schedule):
    """Piecewise constant: ``values[k]`` for ``boundaries[k-1] <= t < boundaries[k]``."""
    values: Sequence[float]
    boundaries: Sequence[float]
    unit: str = "step"

    def __post_init__(self):
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError("Step needs len(values) == len(boundaries) + 1")
        _require_finite("Step", **{f"values[{k}]": v for k, v in enumerate(self.values)})

    def __call__(self, t):
        k = sum(1 for b in self.boundaries if t >= b)
        return self.values[k]


@dataclass
class InverseTemperature(Schedule):
    """The authors' temperature schedule: ``sign / max(t_min, t_start - rate * (t + 1))``.

    Their released code weights with ``softmax(-SI-SDRi / T)`` (so ``alpha = 1 / T``)
    and either keeps T = 2 or lowers it by one per epoch from 20 down to 2.
    ``sign=-1`` turns it into an easy-first (curriculum) coefficient.
    """
    t_start: float = 20.0
    t_min: float = 2.0
    rate: float = 1.0
    sign: float = 1.0
    unit: str = "epoch"

    def __post_init__(self):
        _require_finite("InverseTemperature", t_start=self.t_start, t_min=self.t_min,
                        rate=self.rate, sign=self.sign)
        if self.t_min <= 0:
            raise ValueError(f"InverseTemperature: t_min must be > 0, got {self.t_min}")

    def __call__(self, t):
        return self.sign / max(self.t_min, self.t_start - self.rate * (t + 1))


SCHEDULES = {"constant": Constant, "linear": Linear, "cosine": Cosine,
             "exponential": Exponential, "step": Step, "inverse_temperature": InverseTemperature}


def as_schedule(value: Union[float, Schedule]) -> Schedule:
    return value if isinstance(value, Schedule) else Constant(float(value))


# --------------------------------------------------------------------------- schemes
@dataclass
class WeightingTerms:
    """The pieces of F for one call: ``F = alpha * L + bias + sum(fn(L) for fn in fns)``."""
    alpha: float = 0.0
    bias: Optional[Tensor] = None
    fns: list = field(default_factory=list)

    def __add__(self, other: "WeightingTerms") -> "WeightingTerms":
        if self.bias is None:
            bias = other.bias
        elif other.bias is None:
            bias = self.bias
        else:
            bias = self.bias + other.bias
        return WeightingTerms(self.alpha + other.alpha, bias, self.fns + other.fns)

    def score_fn(self) -> Optional[Callable[[Tensor], Tensor]]:
        if not self.fns:
            return None
        fns = list(self.fns)
        return lambda loss: sum(fn(loss) for fn in fns)


class Weighting:
    """Base class: ``terms(step, epoch, labels)`` gives this scheme's part of F."""

    def terms(self, *, step: int = 0, epoch: int = 0,
              labels: Optional[Tensor] = None) -> WeightingTerms:
        raise NotImplementedError

    def __add__(self, other: "Weighting") -> "Weighting":
        return Combined([self, other])


class Combined(Weighting):
    def __init__(self, parts):
        self.parts = []
        for p in parts:
            self.parts.extend(p.parts if isinstance(p, Combined) else [p])

    def terms(self, **kw):
        total = WeightingTerms()
        for p in self.parts:
            total = total + p.terms(**kw)
        return total

    def __repr__(self):
        return " + ".join(repr(p) for p in self.parts)


class Uniform(Weighting):
    """F = 0: every item weighs the same (the conventional mean)."""

    def terms(self, **kw):
        return WeightingTerms()

    def __repr__(self):
        return "Uniform()"


class Robust(Weighting):
    """F = alpha * L with alpha > 0: weight moves to hard (high-loss) items.

    The paper uses alpha in {1/15, 1/10, 1/5} with L = -SI-SDRi in dB. ``alpha`` may be
    a ``Schedule``.
    """

    def __init__(self, alpha: Union[float, Schedule] = 0.1):
        if not isinstance(alpha, Schedule):
            _require_finite("Robust", alpha=alpha)
        self.alpha = as_schedule(alpha)

    def terms(self, *, step=0, epoch=0, labels=None):
        return WeightingTerms(alpha=self.alpha.at(step, epoch))

    def __repr__(self):
        return f"Robust({self.alpha!r})"


class Curriculum(Weighting):
    """F = beta(k) * L with beta < 0 early (easy items first), annealed to 0 (uniform).

    Default: beta linear from -0.2 to 0 over 10,000 steps.
    """

    def __init__(self, beta: Union[float, Schedule, None] = None):
        if beta is not None and not isinstance(beta, Schedule):
            _require_finite("Curriculum", beta=beta)
        self.beta = as_schedule(beta if beta is not None else Linear(-0.2, 0.0, 10_000))

    def terms(self, *, step=0, epoch=0, labels=None):
        return WeightingTerms(alpha=self.beta.at(step, epoch))

    def __repr__(self):
        return f"Curriculum({self.beta!r})"


class ClassBias(Weighting):
    """F = gamma[class of the item]: a per-class constant, e.g. ``{"speech": 3, "env": 0}``.

    Args:
        gammas: class -> gamma, keyed by class index or by name (with ``class_names``).
        class_names: names of the class indices (``class_names[k]`` is class k).
        check_labels: check at every call that the labels are known classes. The
            check reads the labels on the host (a device sync); a trainer that has
            validated its labels once, when it built the data, passes False.
    Call-time ``labels`` hold class indices shaped like the items ((B, C) or (B,)).
    Classes not in ``gammas`` get 0.
    """

    def __init__(self, gammas: Mapping[Union[int, str], float],
                 class_names: Optional[Sequence[str]] = None, *, check_labels: bool = True):
        self.class_names = list(class_names) if class_names is not None else None
        self.check_labels = check_labels
        table = {}
        for key, gamma in gammas.items():
            if isinstance(key, str):
                if self.class_names is None or key not in self.class_names:
                    raise ValueError(f"unknown class {key!r}; known: {self.class_names}")
                key = self.class_names.index(key)
            _require_finite("ClassBias", **{f"gamma[{key!r}]": gamma})
            table[int(key)] = float(gamma)
        size = max(list(table) + [len(self.class_names or []) - 1]) + 1
        self.gamma = torch.zeros(size, dtype=torch.float64)
        for k, g in table.items():
            self.gamma[k] = g
        self._tables = {}  # device -> gamma on that device: copied once, not every step

    def table(self, device) -> Tensor:
        """The gamma table on ``device`` (cached)."""
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = self.gamma.to(device)
        return self._tables[device]

    def terms(self, *, step=0, epoch=0, labels=None):
        if labels is None:
            raise ValueError("ClassBias needs the class labels of the batch (labels=...)")
        labels = labels.long()
        if self.check_labels and labels.numel():
            lo, hi = (int(v) for v in torch.stack([labels.min(), labels.max()]).tolist())
            if lo < 0 or hi >= len(self.gamma):
                bad = lo if lo < 0 else hi
                raise ValueError(f"label {bad} outside the {len(self.gamma)} known classes")
        return WeightingTerms(bias=self.table(labels.device)[labels])

    def __repr__(self):
        return f"ClassBias({self.gamma.tolist()})"


class Custom(Weighting):
    """F = fn(L, step=..., epoch=..., labels=...): any user score from the detached losses."""

    def __init__(self, fn: Callable[..., Tensor]):
        self.fn = fn

    def terms(self, *, step=0, epoch=0, labels=None):
        fn = self.fn
        return WeightingTerms(fns=[lambda loss: fn(loss, step=step, epoch=epoch, labels=labels)])

    def __repr__(self):
        return f"Custom({getattr(self.fn, '__name__', self.fn)!r})"
