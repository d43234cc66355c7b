"""benchmarks/values_dtype.py on one smoke-budget grid cell (tiny random BERT, the real data files, offline)."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, import_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")  # reads ../shared/data/webnlp, which CI has beside the clone


def test_rounded_copies_are_measured_against_the_run(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's task files are relative to the repository root
    grid, bench = import_benchmark("grid"), import_benchmark("values_dtype")
    results, runs = tmp_path / "grid_smoke", tmp_path / "runs"
    assert grid.main(["--budget", "smoke", "--methods", "exssnet,lora", "--densities", "0.1", "--seeds", "42", "--model",
                      tiny_model_dir, "--results-dir", str(results), "--runs-dir", str(runs), "--disable_tqdm", "true",
                      "--values_dtype", "none"]) == 0  # exact values: the cells the benchmark measures
    recorded = json.loads((results / "exssnet_d0.1_s42.json").read_text())["config"]
    assert recorded["load_best_in_phase"] is False and recorded["restart_stuck_tasks"] == 1  # every trainer setting
    output = tmp_path / "values.json"
    argv = ["--results-dir", str(results), "--output", str(output), "--work-dir", str(tmp_path / "work")]
    assert bench.main(argv) == 0
    cells = json.loads(output.read_text())["cells"]
    assert set(cells) == {"exssnet_d0.1_s42", "lora_s42"}  # exssnet's trained weights, lora's adapters
    for cell in cells.values():
        # Re-evaluating the checkpoint as run reproduces the run's last accuracy row exactly.
        assert cell["float32"] == cell["as_run"]
        for dtype in bench.DTYPES:
            assert set(cell[dtype]) == set(cell["as_run"]) and all(0.0 <= a <= 1.0 for a in cell[dtype].values())
            assert cell[f"{dtype}_bytes_per_task"] < cell["float32_bytes_per_task"]
    text = bench.report(json.loads(output.read_text()))
    assert "| exssnet_d0.1_s42 |" in text and "| lora_s42 |" in text and "\nlora, float16 - float32 over 1 seeds" in text
    assert bench.main(argv) == 0  # a measured cell is kept, not measured again
