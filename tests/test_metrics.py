"""Accuracy-matrix metrics on hand-made matrices, the text table, the heatmap and atomic JSON."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from exssnet_nlp import io as io_mod
from exssnet_nlp import metrics
from exssnet_nlp.metrics import (
    average_accuracy,
    bwt,
    capacity_summary,
    forgetting,
    format_accuracy_matrix,
    fwt,
    new_accuracy_matrix,
    plot_accuracy_matrix,
    summarize,
    trained_tasks,
    write_json_atomic,
)

# A[i][j]: accuracy on task j after training task i. Task 0 improves after task 1 (0.90 -> 0.95),
# so forgetting (measured from the best earlier value) differs from -BWT (measured from A[j][j]).
A3 = [
    [0.90, 0.30, 0.20],
    [0.95, 0.85, 0.40],
    [0.70, 0.75, 0.95],
]
UNTRAINED3 = [0.25, 0.20, 0.10]


def test_hand_computed_3x3():
    # ACC = (0.70 + 0.75 + 0.95) / 3
    assert average_accuracy(A3) == pytest.approx(0.80)
    # BWT = ((0.70 - 0.90) + (0.75 - 0.85)) / 2
    assert bwt(A3) == pytest.approx(-0.15)
    # F = ((max(0.90, 0.95) - 0.70) + (0.85 - 0.75)) / 2
    assert forgetting(A3) == pytest.approx(0.175)
    # FWT = ((A[0][1] - u[1]) + (A[1][2] - u[2])) / 2 = ((0.30 - 0.20) + (0.40 - 0.10)) / 2
    assert fwt(A3, UNTRAINED3) == pytest.approx(0.20)
    summary = summarize(A3, UNTRAINED3)
    assert set(summary) == {"average_accuracy", "bwt", "forgetting", "fwt"}
    assert summary["bwt"] == pytest.approx(-0.15) and summary["fwt"] == pytest.approx(0.20)


def test_bwt_is_exactly_zero_when_columns_are_unchanged():
    # Values that are not exact in binary (0.1 + 0.2) and numpy scalars: still exactly 0.0.
    a = 0.1 + 0.2
    A = [
        [a, None, None, None],
        [a, np.float32(0.77), None, None],
        [a, np.float32(0.77), 0.123456789, None],
        [a, np.float32(0.77), 0.123456789, np.float64(0.5)],
    ]
    assert trained_tasks(A) == 4
    for value in (bwt(A), forgetting(A)):
        assert value == 0.0 and type(value) is float and math.copysign(1.0, value) == 1.0
    assert repr(bwt(A)) == "0.0"


def test_single_task_and_partial_runs():
    A = new_accuracy_matrix(3)
    with pytest.raises(ValueError, match="no task"):
        average_accuracy(A)
    A[0][0] = 0.8
    assert summarize(A, [0.1, 0.2, 0.3]) == {"average_accuracy": 0.8, "bwt": 0.0, "forgetting": 0.0, "fwt": None}
    # After two of three tasks the metrics use the 2 x 2 prefix.
    A[0][1], A[1][0], A[1][1] = 0.4, 0.6, 0.9
    assert trained_tasks(A) == 2
    assert average_accuracy(A) == pytest.approx(0.75)
    assert bwt(A) == pytest.approx(-0.2)
    assert fwt(A, [0.1, 0.3, None]) == pytest.approx(0.1)


def test_fwt_none_when_not_computable_and_skips_unknown_entries():
    assert fwt(A3, None) is None
    assert fwt(A3, [None, None, None]) is None
    # Only j=2 is measurable: A[1][2] - u[2] = 0.40 - 0.10
    assert fwt(A3, [0.25, None, 0.10]) == pytest.approx(0.30)
    with pytest.raises(ValueError, match="one per task"):
        fwt(A3, [0.1])


def test_missing_entries_and_bad_shapes_raise():
    A = [[0.9, None], [None, 0.8]]
    with pytest.raises(ValueError, match=r"A\[1\]\[0\]"):
        bwt(A)
    with pytest.raises(ValueError, match="T x T"):
        bwt([[0.9, 0.1], [0.9]])


def test_format_accuracy_matrix():
    A = [[0.9, None], [0.85, 0.7]]
    text = format_accuracy_matrix(A, ["bbc_news", "sms_spam"], untrained=[0.2, 0.5])
    lines = text.splitlines()
    assert "bbc_news" in lines[0] and "sms_spam" in lines[0]
    assert "after 0: bbc_news" in lines[2] and "90.0" in lines[2] and lines[2].rstrip().endswith("-")
    assert "85.0" in lines[3] and "70.0" in lines[3]
    assert lines[4].startswith("untrained") and "50.0" in lines[4]
    with pytest.raises(ValueError):
        format_accuracy_matrix(A, ["only one"])


def test_plot_accuracy_matrix_writes_png_atomically(tmp_path):
    path = tmp_path / "plots" / "acc.png"
    out = plot_accuracy_matrix([[0.9, None], [0.85, 0.7]], ["a", "b"], path, title="demo")
    assert out == path and path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["acc.png"]  # no temp file left behind


def test_write_json_atomic_round_trip_and_failure(tmp_path, monkeypatch):
    path = tmp_path / "out" / "results.json"
    obj = {"A": [[0.9, None], [np.float64(0.8), 0.7]], "n": np.int64(3), "arr": np.arange(3), "where": tmp_path}
    write_json_atomic(path, obj)
    loaded = json.loads(path.read_text())
    assert loaded == {"A": [[0.9, None], [0.8, 0.7]], "n": 3, "arr": [0, 1, 2], "where": str(tmp_path)}

    # A write that fails part-way leaves the previous file intact and no temp files.
    def broken_replace(src, dst):
        raise OSError("disk full")

    assert metrics.write_json_atomic is io_mod.write_json_atomic  # one atomic writer, in exssnet_nlp.io
    monkeypatch.setattr(io_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"new": True})
    monkeypatch.undo()
    assert json.loads(path.read_text())["n"] == 3
    assert os.listdir(path.parent) == ["results.json"]
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text())["n"] == 3
    # Strict JSON: NaN and infinities (an accuracy never measured) are written as null, never as bare NaN.
    write_json_atomic(path, {"bwt": float("nan"), "row": [np.float64("inf"), 0.5]})
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert json.loads(path.read_text()) == {"bwt": None, "row": [None, 0.5]}


def test_capacity_summary():
    cap = {"layer.0.query": {"used": 0.2, "free": 0.8, "density": 0.1}, "layer.0.key": {"used": 0.4, "free": 0.6, "density": 0.1}}
    out = capacity_summary(cap)
    assert out["num_layers"] == 2
    assert out["layers"]["layer.0.key"] == {"used": 0.4, "free": 0.6, "density": 0.1}
    assert out["mean_used"] == pytest.approx(0.3) and out["mean_free"] == pytest.approx(0.7)
    assert capacity_summary({}) == {"layers": {}, "mean_used": None, "mean_free": None, "num_layers": 0}
    with pytest.raises(ValueError, match="free"):
        capacity_summary({"x": {"used": 0.1}})
