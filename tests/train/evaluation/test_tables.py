"""The paper's tables (train.evaluation.tables) and writing a test through the run folder."""
import json

import numpy as np
import pytest

from train.evaluation.tables import (
    COLUMNS,
    format_table,
    per_class,
    summarize,
    write_test_results,
)
from train.run_folder import RunFolder


def test_summarize_is_mean_std_and_the_papers_percentiles():
    values = np.arange(101, dtype=float)
    row = summarize(values)
    assert list(row) == list(COLUMNS)
    assert row["mean"] == 50.0 and row["p1"] == 1.0 and row["p50"] == 50.0 and row["p99"] == 99.0
    assert row["std"] == pytest.approx(values.std())
    assert all(np.isnan(v) for v in summarize(np.zeros(0)).values())


def test_per_class_rows_only_for_classes_present():
    rows = per_class(np.array([1.0, 2.0, 3.0]), np.array([2, 0, 2]), ["a", "b", "c"])
    assert list(rows) == ["a", "c"] and rows["c"]["count"] == 2 and rows["c"]["mean"] == 2.0


def test_write_test_results_stores_what_it_prints(tmp_path, capsys):
    res = {"sisdri": np.array([1.0, 3.0, 5.0]), "sisdr": np.array([0.0, 1.0, 2.0]),
           "labels": np.array([0, 1, 1]), "example": np.array([0, 0, 1])}
    folder = RunFolder(tmp_path / "ev")
    out = write_test_results(folder, res, ["dog", "rain"], info={"step": 9})
    assert json.loads(folder.results_json.read_text()) == out
    assert out["step"] == 9 and out["items"] == 3 and out["test"]["mean"] == 3.0
    assert out["per_class"]["rain"]["count"] == 2
    assert folder.read_test_items()["classes"].tolist() == ["dog", "rain", "rain"]
    text = capsys.readouterr().out
    assert "test SI-SDRi (dB)" in text and "per class" in text and str(folder.results_json) in text


def test_format_table_aligns_rows():
    text = format_table({"a": {"mean": 1.0, "count": 3}}, columns=("count", "mean"), title="t")
    assert text.splitlines()[2].split() == ["a", "3", "1.00"]
