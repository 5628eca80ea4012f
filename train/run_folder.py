"""The run folder, one file format in one place: every other module asks here.

A run folder (``--run-dir``) holds:

* ``config.json``: the run's configuration as given (defaults filled in), which
  ``python -m train --config RUN/config.json`` runs again;
* ``checkpoint.pt``: model, optimizer, step and RNG state, written atomically (a
  temporary file in the same folder, fsync, rename: a crash during a save leaves the
  previous checkpoint intact); ``load_trained`` builds its model for separate/evaluate;
* ``best.pt``: the model of the best validation SI-SDRi so far (the same format, written
  the same atomic way), which the final test uses unless ``--test-on last``;
* ``metrics.jsonl``: one strict-JSON object per line (``kind``: setup, train, val,
  throughput), consistent after a resume;
* ``results.json`` and ``test_sisdri.csv``: the test table and one row per test source;
* ``val_curve.png`` and ``test_sisdri_hist.png``: pictures of the above.

Errors name the file: a missing checkpoint is a ``FileNotFoundError``, a damaged or
foreign file a ``RunFolderError`` (a ``ValueError``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from model import build_model

CONFIG_JSON = "config.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
RESULTS_JSON = "results.json"
ITEMS_CSV = "test_sisdri.csv"
VAL_CURVE_PNG = "val_curve.png"
TEST_HIST_PNG = "test_sisdri_hist.png"
ITEM_COLUMNS = ("example", "label", "class", "sisdr", "sisdri")


class RunFolderError(ValueError):
    """A file of a run folder is unreadable, damaged or foreign (the message names it)."""


class RunFolder:
    """The files of one run folder (which need not exist yet)."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_json(self) -> Path:
        return self.path / CONFIG_JSON

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def results_json(self) -> Path:
        return self.path / RESULTS_JSON

    @property
    def items_csv(self) -> Path:
        return self.path / ITEMS_CSV

    def create(self) -> "RunFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # ------------------------------------------------------------------ config.json
    def write_config(self, config: dict) -> Path:
        _atomic_write_text(self.config_json, json.dumps(_strict(config), indent=2) + "\n")
        return self.config_json

    def read_config(self) -> dict:
        return read_config_file(self.config_json)

    # ------------------------------------------------------------------ checkpoint.pt
    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        return save_checkpoint(state, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint)

    # ------------------------------------------------------------------ best.pt
    def save_best(self, state: dict[str, Any]) -> Path:
        """``best.pt``: the best model so far, atomically (like ``checkpoint.pt``)."""
        return save_checkpoint(state, self.best)

    def load_best(self) -> dict[str, Any]:
        return load_checkpoint(self.best)

    # ------------------------------------------------------------------ metrics.jsonl
    def metrics_log(self, enabled: bool = True) -> "MetricsLog":
        return MetricsLog(self.metrics, enabled)

    def read_metrics(self, kind: Optional[str] = None) -> list[dict]:
        """The records of ``metrics.jsonl`` (those of one ``kind``), in order; [] without it."""
        if not self.metrics.exists():
            return []
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines()
                if line.strip()]
        return [r for r in rows if kind is None or r.get("kind") == kind]

    # ------------------------------------------------------------------ results
    def write_results(self, results: dict, items: dict[str, np.ndarray],
                      class_names: Sequence[str]) -> None:
        """``results.json`` (``results`` as is) and ``test_sisdri.csv``: one row per
        (example, source) of ``items`` (arrays ``example``, ``labels``, ``sisdr``, ``sisdri``)."""
        self.create()
        _atomic_write_text(self.results_json, json.dumps(_strict(results), indent=2))
        with open(self.items_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(ITEM_COLUMNS)
            for e, lab, s, si in zip(items["example"], items["labels"], items["sisdr"],
                                     items["sisdri"]):
                name = class_names[int(lab)] if int(lab) < len(class_names) else str(lab)
                w.writerow([int(e), int(lab), name, f"{s:.4f}", f"{si:.4f}"])

    def read_results(self) -> Optional[dict]:
        """``results.json``, or None before the run's test."""
        if not self.results_json.exists():
            return None
        try:
            return json.loads(self.results_json.read_text())
        except json.JSONDecodeError as exc:
            raise RunFolderError(f"{self.results_json} is not valid JSON ({exc})") from None

    def read_test_items(self) -> Optional[dict[str, np.ndarray]]:
        """``test_sisdri.csv`` as arrays ``sisdri`` (N,) and ``classes`` (N,), or None."""
        if not self.items_csv.exists():
            return None
        with open(self.items_csv) as f:
            rows = list(csv.DictReader(f))
        return {"sisdri": np.array([float(r["sisdri"]) for r in rows]),
                "classes": np.array([r["class"] for r in rows])}


# --------------------------------------------------------------------------- config files
def read_config_file(path: os.PathLike) -> dict:
    """A configuration file as a dict: JSON (``.json``, such as a run's ``config.json``)
    or YAML (``.yaml``/``.yml``, with PyYAML installed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise RunFolderError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                                 f"or give the config as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RunFolderError(f"{path} is not valid YAML ({exc})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunFolderError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a mapping of option names to values")
    return data


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(state: dict[str, Any], path: os.PathLike) -> Path:
    """Save ``state`` with ``torch.save`` atomically at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (clear error if missing/corrupt)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a damaged file
        raise RunFolderError(f"checkpoint {path} is unreadable ({exc})") from None


def load_trained(path: os.PathLike, device: torch.device | str = "cpu"
                 ) -> tuple[torch.nn.Module, dict]:
    """The model of a run folder (its ``checkpoint.pt``) or of a checkpoint file.

    Returns ``(model in eval mode on device, the run's config dict)``; the dict holds
    the model name (``"model"``) and the steps trained (``"checkpoint_step"``). Raises
    ``FileNotFoundError`` or ``RunFolderError`` naming the file when it is missing,
    unreadable or foreign.
    """
    path = Path(path)
    ckpt_path = path / CHECKPOINT if path.is_dir() else path
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model" not in ckpt.get("args", {}):
        raise RunFolderError(f"{ckpt_path} is not a checkpoint written by python -m train "
                             f"(no model weights and model name)")
    args = dict(ckpt["args"], checkpoint_step=int(ckpt.get("step", 0)))
    state = ckpt["model"]
    model = build_model(args["model"], num_sources=_num_sources(state))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunFolderError(f"{ckpt_path}: weights do not fit model {args['model']!r} "
                             f"({exc})") from None
    return model.to(device).eval(), args


def _num_sources(state: dict) -> int:
    """The number of sources is in the decoder's weight: (S*N, 1 or S, L) -> S outputs."""
    bias = state.get("decoder.bias")
    if bias is not None:                       # original variant: one bias per source
        return int(bias.shape[0])
    return int(state["decoder.weight"].shape[1])  # improved: groups=1, S output channels


# --------------------------------------------------------------------------- metrics.jsonl
class MetricsLog:
    """``metrics.jsonl``: strict JSON (non-finite floats are ``null``, since Python's ``NaN``
    token is not JSON), and a resume first drops the lines logged after the checkpoint's
    step, so a crash between a checkpoint and the end of a run leaves no step twice."""

    def __init__(self, path: os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled  # only the main rank writes

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(_strict(record), allow_nan=False) + "\n")

    def clear(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def truncate(self, step: int) -> None:
        """Keep only the lines up to ``step`` (the checkpoint's), atomically."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the crash
                continue
            if int(record.get("step", 0)) <= step:
                kept.append(line)
        _atomic_write_text(self.path, "".join(line + "\n" for line in kept))


def _strict(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
