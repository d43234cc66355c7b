"""benchmarks/grid.py's report: mean and std over seeds per cell, undefined metrics shown as such, the frontier figure."""

from __future__ import annotations

import json

import pytest
from conftest import import_benchmark


@pytest.fixture()
def grid():
    return import_benchmark("grid")


def run(method, density, seed, acc, bwt=0.0, stored=5_000_000):
    tasks = ["a", "b"]
    return {"method": method, "density": density, "seed": seed, "variant": None, "tasks": tasks, "average_accuracy": acc,
            "bwt": bwt, "forgetting": None if bwt is None else 0.0, "fwt": None if bwt is None else 0.01,
            "stored_bytes": stored, "wall_seconds": 10.0, "machine": {"device": "CPU: test"},
            "storage_per_task": {t: {"head": 10, "router": 1000, "total": 1010} for t in tasks}}


def test_report_aggregates_seeds_and_draws_the_frontier(grid, tmp_path):
    """Bytes per task leave out the task-inference routers (2 tasks x 1,000 bytes here): not every method has them."""
    results = tmp_path / "grid_cpu"
    results.mkdir()
    runs = [run("exssnet", 0.1, 42, 0.60), run("exssnet", 0.1, 43, 0.70), run("exssnet", 0.1, 44, 0.65),
            run("multitask", None, 42, 0.80, bwt=None, stored=90_000_000)]
    runs[1]["restarts"] = {"b": [{"attempt": 0, "restarted": True}]}
    for i, r in enumerate(runs):
        (results / f"r{i}.json").write_text(json.dumps(r))
    text = grid.report(results, tmp_path / "frontier_cpu.png")
    rows = {r["key"]: r for r in json.loads((results / "summary.json").read_text())["rows"]}
    assert rows["exssnet@0.1"]["average_accuracy"] == pytest.approx(0.65)
    assert rows["exssnet@0.1"]["average_accuracy_std"] == pytest.approx(0.05)  # sample std of 60, 70, 65
    assert rows["exssnet@0.1"]["bytes_per_task"] == pytest.approx(2_499_000) and rows["exssnet@0.1"]["seeds"] == [42, 43, 44]
    assert rows["exssnet@0.1"]["restarts"] == 1 and rows["multitask"]["restarts"] == 0
    assert rows["multitask"]["bwt"] is None and rows["multitask"]["average_accuracy"] == pytest.approx(0.8)
    assert "| exssnet | 0.1 | 3 | 65.00 +- 5.00 | 0.00 |" in text
    assert "| multitask | - | 1 | 80.00 +- 0.00 | - | - | - |" in text
    assert (tmp_path / "frontier_cpu.png").stat().st_size > 10_000
    assert grid.frontier_all(tmp_path) == tmp_path / "frontier.png" and (tmp_path / "frontier.png").exists()
