"""The Table-1 experiment in miniature: every kind of row is trained and reported, and a rerun resumes."""

from __future__ import annotations

import json

import pytest

from vidistill.distill.experiments import Table1, Table1Config


@pytest.mark.slow
def test_table1_miniature_runs_every_row_and_resumes(tmp_path):
    config = Table1Config.quick()
    experiment = Table1(config, str(tmp_path), progress=False)
    results = experiment.run()
    expected = {
        "teacher",
        "student/uniform/k6",
        "student/first/k6",
        "parallel/L_rep, L_pred, L_CE/k6",
        "serial/L_rep, L_pred, L_CE/k6",
        "serial/L_pred/k6",
        "vlad/teacher",
        "vlad/uniform/k6",
        "vlad/serial/k6",
        "narrow/serial/k6",
        "narrow/uniform/k6",
    }
    assert set(results) == expected
    for name, row in results.items():
        assert 0.0 <= row["gap"] <= 1.0 and 0.0 <= row["map"] <= 1.0, name
    assert results["student/uniform/k6"]["frames"] == 6 and results["teacher"]["frames"] == config.max_frames
    narrow = results["narrow/serial/k6"]["parameters"] / results["teacher"]["parameters"]
    assert 0.2 < narrow < 0.3  # a quarter of the teacher's parameters
    table = (tmp_path / "table1.md").read_text()
    assert "| Teacher-Skyline (all frames) |" in table and "| Serial L_rep, L_pred, L_CE |" in table
    rows = [
        line.split(" |")[0]
        for line in table.splitlines()
        if line.startswith("| Parallel") or line.startswith("| Serial")
    ]
    assert rows == [
        "| Parallel L_rep, L_pred, L_CE",
        "| Serial L_pred",
        "| Serial L_rep, L_pred, L_CE",
    ]  # the paper's order
    assert json.loads((tmp_path / "results.json").read_text()) == results
    runs = tmp_path / "runs"
    files = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    assert Table1(config, str(tmp_path), progress=False).run() == results
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == files  # nothing retrained


@pytest.mark.slow
def test_segment_experiment_miniature_runs_every_cell_benches_and_resumes(tmp_path, capsys):
    from vidistill.cli import main
    from vidistill.segment_experiment import FAMILIES, SegmentExperiment, SegmentExperimentConfig

    assert main(["experiment", "segments", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    cells = {f"{f}/{kind}" for f in FAMILIES for kind in ("video", "scratch", "pretrained")}
    assert set(results) == cells | {"student/alone", "student/distilled", "latency"}
    for family in FAMILIES:
        assert 0.0 <= results[f"{family}/video"]["gap"] <= 1.0
        for kind in ("scratch", "pretrained"):
            row = results[f"{family}/{kind}"]
            assert 0.0 <= row["map"] <= 1.0 and 0.0 <= row["map_tta"] <= 1.0 and row["frames"] == 5
    assert results["student/alone"]["frames"] == results["student/distilled"]["frames"] == 2
    config = SegmentExperimentConfig.quick()
    for name in SegmentExperiment(config, str(tmp_path)).segment_models():
        for precision in ("fp32", "int8-dynamic"):
            assert set(results["latency"][name][precision]) == {"1", "4"}, (name, precision)
    report = (tmp_path / "segments.md").read_text()
    assert "| transformer |" in report and "distilled (serial L_rep, L_pred, L_CE)" in report
    capsys.readouterr()
    started = (tmp_path / "results.json").stat().st_mtime
    assert main(["experiment", "segments", "--quick", "--out", str(tmp_path)]) == 0  # every cell done: nothing runs
    assert (tmp_path / "results.json").stat().st_mtime == started
    assert main(["experiment", "segments", "--quick", "--serial-pred-rows", "--out", str(tmp_path)]) == 2
    assert "--serial-pred-rows belongs to table1" in capsys.readouterr().err
    assert main(["experiment", "segments", "--quick", "--seed", "1", "--out", str(tmp_path)]) == 2
    assert "holds an experiment with another configuration (changed: seed)" in capsys.readouterr().err
