"""benchmarks/kkt_transfer.py end to end at its smoke budget, on a tiny random BERT (offline, seconds)."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, import_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")  # reads ../shared/data/webnlp, which CI has beside the clone


@pytest.fixture(scope="module")
def bench():
    return import_benchmark("kkt_transfer")


def test_smoke_end_to_end(bench, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the config's task files are relative to the repository root
    output, runs = tmp_path / "kkt.json", tmp_path / "runs"
    argv = ["--smoke", "--seeds", "42", "--model", tiny_model_dir, "--output", str(output), "--runs-dir", str(runs),
            "--disable_tqdm", "true"]
    assert bench.main(argv) == 0
    data = json.loads(output.read_text())
    assert data["budget"] == "smoke" and data["machine"]["device"]
    assert set(data["runs"]) == {bench.run_key(s, arm, 42) for s in bench.SEQUENCES for arm in bench.ARMS}
    for key, run in data["runs"].items():
        sequence, arm, _ = key.split("/")
        assert run["tasks"] == list(bench.SEQUENCES[sequence])
        assert run["config"]["kkt_mode"] == arm
        task2 = run["task2"]
        assert task2["mask_curve"] and task2["mask_steps"] == task2["mask_curve"][-1]["step"]
        assert 0.0 <= task2["test_accuracy"] <= 1.0
        # KKT records what it scored on task 2 (which earlier task, its KNN accuracy, whether it beat the threshold).
        assert (task2["kkt"] is None) == (arm == "off")
        if arm == "best":
            assert set(task2["kkt"]["knn_accuracy"]) == {bench.SEQUENCES[sequence][0]}
    summary = data["summary"]
    assert set(summary) == set(bench.SEQUENCES)
    assert all(row["complete"] for s in summary.values() for row in s["per_seed"])

    # The relabelled copy: ag_news's very rows, every label moved by the fixed permutation.
    from exssnet_nlp.data import load_task

    sampling = bench.sampling_args(bench.parse(["--smoke"])[0], [], 42)
    original = load_task(bench.base_tasks("configs/webnlp_local.yaml")["ag_news"], **sampling)
    copy_dir = runs / "data" / f"{bench.RELABELLED}_s42"
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (copy_dir / f"{split}.jsonl").read_text().splitlines()]
        ds = getattr(original, split)
        assert [r["text"] for r in rows] == list(ds["text"])
        assert [r["label"] for r in rows] == [(label + 1) % 4 for label in ds["label"]]

    # A second call resumes: nothing left to run, the report prints both sequences.
    capsys.readouterr()
    assert bench.main(argv) == 0
    assert bench.main(["--report", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    for sequence in bench.SEQUENCES:
        assert f"| {sequence} (" in printed and f"| {sequence} | 42 |" in printed


def test_steps_to_reach(bench):
    curve = [{"step": 5, "accuracy": 0.3}, {"step": 10, "accuracy": 0.5}, {"step": 15, "accuracy": 0.45}]
    assert bench.steps_to_reach(curve, 0.5) == 10
    assert bench.steps_to_reach(curve, 0.3) == 5
    assert bench.steps_to_reach(curve, 0.6) is None
    assert bench.steps_to_reach(curve, None) is None
