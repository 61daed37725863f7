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
    from vidistill.distill.evaluate import evaluate_segments
    from vidistill.distill.runs import load_model
    from vidistill.segment_experiment import SegmentExperiment, SegmentExperimentConfig

    assert main(["experiment", "segments", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    families = SegmentExperimentConfig.quick().families
    cells = {f"{f}/{kind}" for f in families for kind in ("video", "scratch", "pretrained")}
    assert set(results) == cells | {"student/alone", "student/distilled", "latency"}
    for family in families:
        for kind in ("scratch", "pretrained"):
            assert results[f"{family}/{kind}"]["frames"] == 5
    assert results["student/alone"]["frames"] == results["student/distilled"]["frames"] == 2
    config = SegmentExperimentConfig.quick()
    experiment = SegmentExperiment(config, str(tmp_path))
    for name in experiment.segment_models():
        for precision in ("fp32", "int8-dynamic"):
            assert set(results["latency"][name][precision]) == {"1", "4"}, (name, precision)
    # a cell's two segment MAPs are what `vidistill eval --segments [--shift]` computes (evaluate_segments) of its
    # saved run on the held-out records, without and with the experiment's shifts (one cell: seconds each); they
    # differ, so a mix-up would show
    cell, loaded = results["nextvlad/pretrained"], load_model(experiment.run_dir("nextvlad/pretrained"))
    for key, shifts in (("map", (0,)), ("map_tta", config.shifts)):
        common = dict(num_classes=loaded.num_classes, max_frames=loaded.max_frames, batch_size=128)
        assert evaluate_segments(loaded.model, experiment.heldout, shifts=shifts, **common)["map"] == cell[key], key
    assert cell["map"] != cell["map_tta"]
    # the report shows results.json's numbers, each in its column (to the digits it prints)
    report = (tmp_path / "segments.md").read_text()
    best = max(families, key=lambda f: results[f"{f}/pretrained"]["map_tta"])
    assert f"model ({best}): 2 of each segment's 5 frames" in report

    def latency(name):
        return [results["latency"][name][p][b] for p in ("fp32", "int8-dynamic") for b in ("1", "4")]

    for family in families:
        video, scratch, pre = (results[f"{family}/{kind}"] for kind in ("video", "scratch", "pretrained"))
        numbers = [pre["parameters"], video["gap"], scratch["map"], scratch["map_tta"], pre["map"], pre["map_tta"]]
        _shows(report, family, numbers + latency(f"{family}/pretrained"))
    for name, label in (
        (f"{best}/pretrained", f"{best} segment model (teacher)"),
        ("student/alone", "student k=2, trained alone"),
        ("student/distilled", "student k=2, distilled (serial L_rep, L_pred, L_CE)"),
    ):
        row = results[name]
        _shows(report, label, [row["frames"], row["parameters"], row["map"], row["map_tta"], *latency(name)])
    capsys.readouterr()
    started = (tmp_path / "results.json").stat().st_mtime
    assert main(["experiment", "segments", "--quick", "--out", str(tmp_path)]) == 0  # every cell done: nothing runs
    assert (tmp_path / "results.json").stat().st_mtime == started
    assert main(["experiment", "segments", "--quick", "--serial-pred-rows", "--out", str(tmp_path)]) == 2
    assert "--serial-pred-rows belongs to table1" in capsys.readouterr().err
    assert main(["experiment", "segments", "--quick", "--seed", "1", "--out", str(tmp_path)]) == 2
    assert "holds an experiment with another configuration (changed: seed)" in capsys.readouterr().err


def _shows(report: str, first: str, numbers: list) -> None:
    """The report's table row whose first cell is `first` holds `numbers`, each to the digits it is printed with."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in report.splitlines() if line[:1] == "|"]
    (cells,) = [row[1:] for row in rows if row[0] == first]
    assert len(cells) == len(numbers), (first, cells)
    for cell, number in zip(cells, numbers):
        digits = len(cell.partition(".")[2])
        assert abs(float(cell.replace(",", "")) - number) <= 0.5 * 10**-digits + 1e-9, (first, cell, number)


def test_anyk_experiment_resumes_from_its_results_and_reports_them(tmp_path, capsys):
    """Every cell of the miniature already in results.json: the command trains nothing and writes the table (the
    whole miniature, 3 minutes on 2 cores, is run by hand: docs/EXPERIMENTS.md); two seeds give mean ± half-range,
    and the verdict holds to 0.5 GAP points."""
    import dataclasses

    from vidistill.anyk_experiment import AnyKExperiment, AnyKExperimentConfig
    from vidistill.cli import main
    from vidistill.distill.experiments import claim_experiment_dir

    def cell(gap, seconds, **per_k):
        return {"gap": gap, "map": gap - 0.2, "seconds": seconds, "frames": 10, **per_k}

    def seed(s, shift):
        return {
            f"s{s}/uniform/k6": cell(0.40 + shift, 10),
            f"s{s}/uniform/k10": cell(0.50 + shift, 12),
            f"s{s}/parallel/k6": cell(0.45 + shift, 20),
            f"s{s}/parallel/k10": cell(0.60 + shift, 22),
            f"s{s}/anyk/uniform": cell(0.5, 11, gap_k6=0.41 + shift, gap_k10=0.52 + shift),
            f"s{s}/anyk/parallel": cell(0.5, 30, gap_k6=0.446 + shift, gap_k10=0.58 + shift),
            f"s{s}/anyk/parallel-self": cell(0.5, 33, gap_k6=0.44 + shift, gap_k10=0.59 + shift),
        }

    config = AnyKExperimentConfig.quick()
    claim_experiment_dir(str(tmp_path / "one"), config)
    (tmp_path / "one" / "results.json").write_text(json.dumps(seed(0, 0.0)))
    assert main(["experiment", "anyk", "--quick", "--out", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "one" / "results.json").read_text()) == seed(0, 0.0)  # nothing trained again
    report = (tmp_path / "one" / "anyk.md").read_text()
    assert "| 6 | 0.400 | 0.450 | 0.410 | 0.446 | 0.440 | -0.004 |  |" in report
    assert "- k=6: any-k Parallel 0.446 vs dedicated Parallel 0.450 (-0.004): met" in report
    assert "- k=10: any-k Parallel + self-distillation 0.590 vs dedicated Parallel 0.600 (-0.010): missed" in report
    assert "| any-k Parallel (one run) | 30 | 0.71x |" in report  # vs the 42 s of the two dedicated runs

    two = AnyKExperiment(dataclasses.replace(config, seeds=(0, 1)), str(tmp_path / "two"), progress=False)
    two.results = {**seed(0, 0.0), **seed(1, 0.02)}
    (tmp_path / "two").mkdir()
    text = open(two.write_report()).read()
    assert (
        "| 10 | 0.510 ± 0.010 | 0.610 ± 0.010 | 0.530 ± 0.010 | 0.590 ± 0.010 | 0.600 ± 0.010 | -0.020 ± 0.000 |"
        in text
    )
    assert "over the training seeds (0, 1)" in text


def test_ensemble_experiment_resumes_from_its_results_and_reports_them(tmp_path, capsys):
    """Every cell of the miniature already in results.json: the command trains nothing and writes the table (the
    whole miniature, 6 minutes on 2 cores, is run by hand: docs/EXPERIMENTS.md)."""
    from vidistill.cli import main
    from vidistill.distill.experiments import claim_experiment_dir
    from vidistill.ensemble_experiment import EnsembleExperimentConfig

    config = EnsembleExperimentConfig.quick()
    claim_experiment_dir(str(tmp_path), config)

    def model(gap, parameters=1000):
        return {"gap": gap, "map": gap - 0.1, "parameters": parameters, "seconds": 1.0}

    def speed(steps_per_second):
        return {**model(0.5), "steps_per_second": steps_per_second, "steps": 8}

    results = {
        "teacher/hlstm": model(0.60, 858_120),
        "teacher/netvlad": model(0.70),
        "teacher/mixnextvlad": model(0.75),
        "ensemble": {
            **model(0.72),
            "weights": [0.3, 0.7],
            "fitted": {"videos": 16, "gap": 0.8, "equal_gap": 0.78},
        },
        "student/alone": model(0.5),
        "student/single": model(0.55),
        "outputs/ensemble": {"seconds": 2.0, "videos": 48, "bytes": 10},
        "student/ensemble": model(0.57),
        "speed/ensemble": model(0.7),
        "speed/hlstm/live": speed(4.0),
        "outputs/teacher/hlstm": {"seconds": 3.0, "videos": 48, "bytes": 2_000_000},
        "speed/hlstm/stored": speed(10.0),
        "speed/ensemble/live": speed(2.0),
        "outputs/speed/ensemble": {"seconds": 5.0, "videos": 48, "bytes": 3_000_000},
        "speed/ensemble/stored": speed(11.0),
        "latency": {"teacher/hlstm": 0.71, "ensemble": 5.32, "student/ensemble": 0.22},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["experiment", "ensemble", "--quick", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text()) == results  # nothing trained again
    report = (tmp_path / "ensemble.md").read_text()
    assert "| hlstm teacher | 40 | 858,120 | 0.600 | 0.500 | 0.71 |" in report
    assert "| ensemble of the 2 teachers (hlstm 0.3, netvlad 0.7) | 40 | 1,000 | 0.720 | 0.620 | 5.32 |" in report
    assert "distilled from the netvlad teacher | 6 |" in report  # the best single teacher by GAP
    assert (
        "| H-LSTM student k=6, distilled from the ensemble (stored outputs) | 6 | 1,000 | 0.570 | 0.470 | 0.22 |"
        in report
    )
    assert "| H-LSTM | 4.00 | 10.00 | 2.5x | 3 s for 48 videos (2.0 MB) |" in report
    assert "| ensemble of 2 (hlstm, netvlad) | 2.00 | 11.00 | 5.5x | 5 s for 48 videos (3.0 MB) |" in report
    assert "GAP 0.800 there (equal weights: 0.780)" in report
