"""benchmarks/grid.py's report: mean and std over seeds per cell, undefined metrics shown as such, the frontier figure."""

from __future__ import annotations

import hashlib
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
            "storage_per_task": {t: {"head": 10, "router": 1000, "total": 1010} for t in tasks},
            "method_config": {"values_dtype": "float16"} if density is not None else {}}


def test_report_aggregates_seeds_and_draws_the_frontier(grid, tmp_path):
    """Bytes per task leave out the task-inference routers (2 tasks x 1,000 bytes here): not every method has them."""
    results = tmp_path / "grid_cpu"
    results.mkdir()
    runs = [run("exssnet", 0.1, 42, 0.60), run("exssnet", 0.1, 43, 0.70), run("exssnet", 0.1, 44, 0.65),
            run("multitask", None, 42, 0.80, bwt=None, stored=90_000_000)]
    # a restart, then a second attempt that also ended at chance and was kept: one restart
    runs[1]["restarts"] = {"b": [{"attempt": 0, "restarted": True}, {"attempt": 1, "restarted": False}]}
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
    assert "| multitask | - | 1 | 80.00 (one seed) | - | - | - |" in text  # one seed: no spread to show
    assert (tmp_path / "frontier_cpu.png").stat().st_size > 10_000
    assert grid.frontier_all(tmp_path) == tmp_path / "frontier.png" and (tmp_path / "frontier.png").exists()


def test_the_owned_share_is_each_later_tasks_values_over_the_first_tasks(grid, tmp_path):
    """The first task owns its whole mask; a later task stores only the values it owns, so the ratio is its share."""
    results = tmp_path / "grid_cpu"
    results.mkdir()
    owning = [run("exssnet", 0.1, seed, 0.6) for seed in (42, 43)]
    for r, later in zip(owning, (100, 300), strict=True):
        r["tasks"] = ["a", "b", "c"]
        r["storage_per_task"] = {"a": {"values": 1000}, "b": {"values": later}, "c": {"values": 2 * later}}
    runs = [*owning, run("supsup", 0.1, 42, 0.6)]  # no values: no share
    for i, r in enumerate(runs):
        (results / f"r{i}.json").write_text(json.dumps(r))
    text = grid.report(results, tmp_path / "frontier_cpu.png")
    rows = {r["key"]: r for r in json.loads((results / "summary.json").read_text())["rows"]}
    assert rows["exssnet@0.1"]["owned_later"] == pytest.approx((0.15 + 0.45) / 2)  # seeds' means of b and c
    assert rows["supsup@0.1"]["owned_later"] is None
    assert "| later tasks own % of their mask |" in text and text.count("| 30.00 |") == 1


def test_the_last_phases_gain_is_what_it_kept_over_what_the_first_phase_kept(grid, tmp_path):
    """Per task: the last phase's kept validation accuracy minus the first phase's, averaged over tasks and seeds. A
    run with `load_best_in_phase` kept each phase's best point, not its last; one-phase methods have no gain."""
    curves = {"a": {"mask": [{"accuracy": 0.5}, {"accuracy": 0.7}], "weight": [{"accuracy": 0.8}, {"accuracy": 0.6}]},
              "b": {"mask": [{"accuracy": 0.4}], "weight": [{"accuracy": 0.5}]}}
    assert grid.phase_gain({"curves": curves}) == pytest.approx((-0.1 + 0.1) / 2)
    assert grid.phase_gain({"curves": curves, "config": {"load_best_in_phase": True}}) == pytest.approx((0.1 + 0.1) / 2)
    # cells recorded before every setting was: the flag they ran with
    assert grid.phase_gain({"curves": curves, "config": {}, "overrides": ["--load_best_in_phase", "true"]}) == pytest.approx(0.1)
    assert grid.phase_gain({"curves": {"a": {"train": [{"accuracy": 0.9}]}}}) is None
    assert grid.phase_gain({}) is None
    results = tmp_path / "grid_cpu"
    results.mkdir()
    for seed, gain in ((42, 0.1), (43, 0.3)):
        cell = {**run("exssnet", 0.1, seed, 0.6), "curves": {"a": {"mask": [{"accuracy": 0.5}], "weight": [{"accuracy": 0.5 + gain}]}}}
        (results / f"exssnet_d0.1_s{seed}.json").write_text(json.dumps(cell))
    (results / "supsup_d0.1_s42.json").write_text(json.dumps({**run("supsup", 0.1, 42, 0.55),
                                                              "curves": {"a": {"mask": [{"accuracy": 0.5}]}}}))
    text = grid.report(results, None)
    table = [line for line in text.splitlines() if line.startswith("| exssnet") or line.startswith("| supsup")]
    assert table[0].endswith("| 0 | +20.00 | - |")  # exssnet: mean of +10 and +30 points
    assert table[1].endswith("| 0 | - | - |")  # supsup: one phase
    rows = {r["key"]: r for r in json.loads((results / "summary.json").read_text())["rows"]}
    assert rows["exssnet@0.1"]["phase_gain"] == pytest.approx(0.2) and rows["supsup@0.1"]["phase_gain"] is None


def test_exact_value_cells_get_their_own_row_and_a_post_hoc_float16_row(grid, tmp_path):
    """Cells that kept exact values are not merged with the float16 default; values_dtype.py's re-evaluation of them
    becomes a `[float16 values, post hoc]` row with its accuracy and bytes, and no BWT (only the last row was measured)."""
    results = tmp_path / "grid_cpu"
    results.mkdir()
    exact = [{**run("exssnet", 0.1, seed, acc), "method_config": {"values_dtype": None}}
             for seed, acc in ((42, 0.60), (43, 0.70))]
    cells = {"exssnet_d0.1_s42": exact[0], "exssnet_d0.1_s43": exact[1], "exssnet_d0.1_s44": run("exssnet", 0.1, 44, 0.5),
             "supsup_d0.1_s42": {**run("supsup", 0.1, 42, 0.55), "method_config": {}}}
    for stem, r in cells.items():
        (results / f"{stem}.json").write_text(json.dumps(r))
    measured = {stem: {"float16": {"a": acc, "b": acc + 0.02}, "float16_bytes_per_task": 1_000}
                for stem, acc in (("exssnet_d0.1_s42", 0.6), ("exssnet_d0.1_s43", 0.68))}
    (tmp_path / "values_dtype_cpu.json").write_text(json.dumps({"cells": {**measured, "gone_s1": measured["exssnet_d0.1_s42"]}}))
    text = grid.report(results, tmp_path / "frontier_cpu.png")
    rows = {r["key"]: r for r in json.loads((results / "summary.json").read_text())["rows"]}
    assert set(rows) == {"exssnet@0.1", "exssnet@0.1 [exact values]", "exssnet@0.1 [float16 values, post hoc]", "supsup@0.1"}
    assert rows["exssnet@0.1"]["seeds"] == [44] and rows["exssnet@0.1 [exact values]"]["seeds"] == [42, 43]
    post = rows["exssnet@0.1 [float16 values, post hoc]"]
    assert post["average_accuracy"] == pytest.approx(0.65) and post["bytes_per_task"] == 1_000 and post["bwt"] is None
    assert "| exssnet [float16 values, post hoc] | 0.1 | 2 | 65.00 +- 5.66 | - | - | - | 0.001 |" in text
    assert "| exssnet [exact values] | 0.1 | 2 | 65.00 +- 7.07 | 0.00 |" in text


def test_remeasure_storage_reads_old_checkpoints_in_the_current_format(grid, tmp_path):
    """A cell that ran before masks were deflated (format 2: raw packed bits) gets its bytes in format 3; its
    accuracy is left alone, and so is a cell whose checkpoint is gone."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    from exssnet_nlp import checkpoint as ckpt
    from exssnet_nlp.methods import get_method

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64))
    model = get_method("supsup").build(encoder, {"density": 0.1})
    model.add_task("a", 2)
    model.begin_phase("mask")
    model.finish_task()
    out = tmp_path / "cell" / "checkpoint"
    model.save_pretrained(out)
    # Rewrite it as format 2 wrote it: raw masks (sizes and hashes recorded, config re-sealed).
    tensors = load_file(out / "task_000.safetensors")
    raw = {**tensors, **{"mask." + n: layer.packed_mask(0) for n, layer in model.supermask_layers().items()}}
    save_file(raw, out / "task_000.safetensors")
    data = json.loads((out / ckpt.CONFIG_NAME).read_text())
    blob = (out / "task_000.safetensors").read_bytes()
    data["files"]["task_000.safetensors"] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    data["format_version"] = 2
    (out / ckpt.CONFIG_NAME).write_text(json.dumps(ckpt.seal_config(data)))
    raw_total = sum(t.numel() * t.element_size() for t in raw.values())

    results = tmp_path / "grid_cpu"
    results.mkdir()
    old = {**run("supsup", 0.1, 42, 0.6, stored=raw_total), "output_dir": str(tmp_path / "cell"), "tasks": ["a"],
           "storage_per_task": {"a": {"total": raw_total}}}
    current = {**run("lora", None, 42, 0.6), "output_dir": str(tmp_path / "nowhere"), "checkpoint_format": ckpt.FORMAT_VERSION}
    (results / "old.json").write_text(json.dumps(old))
    (results / "current.json").write_text(json.dumps(current))
    lines = grid.remeasure_storage(results)
    assert lines[0].startswith("current: no checkpoint at") and lines[1].startswith("old:") and "in format 3" in lines[1]
    after = json.loads((results / "old.json").read_text())
    measured = after["storage_current"]
    assert measured["format_version"] == 3 and measured["stored_bytes"] == model.task_storage_bytes("a")["total"]
    assert measured["stored_bytes"] < raw_total and grid.serving_bytes(after) == measured["stored_bytes"]
    assert after["average_accuracy"] == 0.6 and after["stored_bytes"] == raw_total  # the cell as run is kept
    assert json.loads((results / "current.json").read_text()) == current


def test_the_frontier_shows_the_rows_near_the_best_and_puts_a_failed_row_at_the_bottom_edge(grid, tmp_path):
    """A mask phase at chance (29.6% here) must not squeeze the rows a user chooses between (64 to 69%) into a strip:
    the window keeps every mean within 12 points of the best; the failed row is drawn at the bottom, named with its value."""
    assert grid.accuracy_window([69.1, 64.2, 58.9, 29.6]) == (56.5, 71.0)
    assert grid.accuracy_window([50.0]) == (48.5, 51.0)
    results = tmp_path / "grid_cpu"
    results.mkdir()
    for i, r in enumerate([run("supsup", 0.1, 42, 0.30), run("exssnet", 0.1, 42, 0.66), run("lora", None, 42, 0.67)]):
        (results / f"r{i}.json").write_text(json.dumps(r))
    grid.report(results, tmp_path / "frontier_cpu.png")
    assert (tmp_path / "frontier_cpu.png").stat().st_size > 10_000
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    grid._frontier_panel(ax, json.loads((results / "summary.json").read_text())["rows"], "t")
    assert ax.get_ylim() == (64.5, 68.0)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "supsup@0.1 (n=1): 30.0%, below the axis" in legend
    assert any(t.get_text() == "supsup@0.1: 30.0% (below)" for t in ax.texts)


def test_cells_run_the_decisive_ones_first_and_only_where_the_densities_ask(grid):
    """`--methods exssnet --densities 0.3` ran exssnet@0.1 first (a decisive cell) before this was fixed."""
    assert grid.cells("all", ["exssnet"], [0.3], [42]) == [("exssnet", 0.3, 42)]
    assert grid.cells("all", ["exssnet", "lora"], [0.3, 0.1], [42]) == [
        ("exssnet", 0.1, 42), ("lora", None, 42), ("exssnet", 0.3, 42)]
    assert grid.cells("decisive", None, [0.3], [42])[:2] == [("exssnet", 0.1, 42), ("supsup", 0.1, 42)]


def test_a_variant_runs_only_where_the_method_knows_its_flags(grid):
    """`--variant r48` (lora's rank) on supsup would have run supsup's defaults under the name `supsup[r48]`."""
    todo = [("lora", None, 42), ("supsup", 0.1, 42), ("exssnet", 0.1, 42), ("lora", None, 43)]
    for lora_variant in ("r16", "r48"):
        assert grid.varied_cells(todo, lora_variant) == [("lora", None, 42), ("lora", None, 43)]
    assert grid.varied_cells(todo, "kaiming") == [("supsup", 0.1, 42), ("exssnet", 0.1, 42)]  # lora: no --score_init
    # every method accepts --mask_epochs (a trainer setting); lora has no mask phase to read it
    assert grid.varied_cells(todo, "epochs4") == [("supsup", 0.1, 42), ("exssnet", 0.1, 42)]
    assert grid.varied_cells([("wsn", 0.1, 42)], "epochs4") == [("wsn", 0.1, 42)]
    assert grid.varied_cells([("wsn", 0.1, 42)], "sgd_masks") == []  # wsn's joint phase keeps AdamW
    # supsup has no weight phase; lora's adapter reads adapter_learning_rate
    assert grid.varied_cells(todo, "wlr1e4") == [("exssnet", 0.1, 42)]


def test_a_cells_setting_is_the_last_of_its_flags(grid):
    """A variant's flags follow the budget's and win when the cell runs; the report must read the same value."""
    overrides = ["--weight_learning_rate", "1e-3", "--max_length", "64", "--weight_learning_rate", "1e-4", "--seed", "42"]
    assert grid.setting({"overrides": overrides}, "weight_learning_rate") == "1e-4"
    assert grid.setting({"overrides": overrides}, "load_best_in_phase") is None
    assert grid.setting({"config": {"weight_learning_rate": 5e-5}, "overrides": overrides}, "weight_learning_rate") == 5e-5


def test_the_frontier_shows_each_methods_defaults_and_draws_hypotheses_as_arrows_from_their_plain_rows(grid, tmp_path):
    """exssnet@0.5's `load_best_in_phase` and supsup's 4 mask epochs are today's defaults: those variant rows stand for
    their method and density on the first panel; exssnet@0.1's best_in_phase (off below 0.3) and kaiming stay
    hypotheses; lora's rank is a point of its own. The frontier line joins the continual rows no other beats at no more
    bytes (multitask, not continual, left out)."""
    def cell(method, density, acc, stored, variant=None):
        return {**run(method, density, 42, acc, stored=stored), "variant": variant, "budget": "cpu",
                "method_config": {"values_dtype": "float16"}}  # lora's adapters as its default stores them

    rows_in = [cell("exssnet", 0.5, 0.67, 6_000_000), cell("exssnet", 0.5, 0.68, 6_000_000, "best_in_phase"),
               cell("exssnet", 0.1, 0.66, 3_000_000), cell("exssnet", 0.1, 0.65, 3_000_000, "best_in_phase"),
               cell("exssnet", 0.1, 0.64, 3_500_000, "kaiming"), cell("supsup", 0.1, 0.64, 2_000_000),
               cell("supsup", 0.1, 0.66, 2_000_000, "epochs4"), cell("lora", None, 0.66, 2_500_000),
               cell("lora", None, 0.69, 6_000_000, "r48"), cell("multitask", None, 0.70, 40_000_000)]
    assert [grid.default_now(r) for r in rows_in] == [False, True, False, False, False, False, True, False, False, False]
    results = tmp_path / "grid_cpu"
    results.mkdir()
    for i, r in enumerate(rows_in):
        (results / f"r{i}.json").write_text(json.dumps(r))
    grid.report(results, tmp_path / "frontier_cpu.png")
    rows = json.loads((results / "summary.json").read_text())["rows"]
    chosen = {r["key"] for r in grid.chosen_rows(rows)}
    assert chosen == {"exssnet@0.5 [best_in_phase]", "exssnet@0.1", "supsup@0.1 [epochs4]", "lora", "lora [r48]", "multitask"}
    # supsup@0.1[epochs4] at 2.0 MB beats lora at 2.5; exssnet@0.1 at 3.0 does not beat 66; lora r48 beats exssnet@0.5 at 6.0
    assert [r["key"] for r in grid.pareto(grid.chosen_rows(rows))] == ["supsup@0.1 [epochs4]", "lora [r48]"]
    assert grid.frontier_text(rows).splitlines()[1:] == ["- from 0.999 MB per task: supsup@0.1 [epochs4], 66.00% (1 seed)",
                                                         "- from 2.999 MB per task: lora [r48], 69.00% (1 seed)"]
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    grid._hypothesis_panel(ax, rows, "t")
    labels = sorted(t.get_text() for t in ax.texts if t.get_text())
    assert "exssnet@0.1 [kaiming] -2.00" in labels and "supsup@0.1 [epochs4] +2.00" in labels
    assert "exssnet@0.5 [best_in_phase] +1.00" in labels and not any("r48" in t for t in labels)
    assert sum(1 for t in ax.texts if not t.get_text()) == 4  # one arrow per hypothesis row
