"""``metrics.jsonl``: one JSON object per line, strict JSON, consistent after a resume.

Non-finite floats are written as ``null`` (Python's ``NaN`` token is not JSON),
and resuming from a checkpoint first drops the lines logged after the
checkpoint's step, so a crash between a checkpoint and the end of a run does
not leave those steps in the file twice.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _strict(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


class MetricsLog:
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
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)
