"""2019 segment mode end to end: eval --segments equals predict --segments then score --segments (also with
shift test-time augmentation, --shift -1,0,1)."""

from __future__ import annotations

from pathlib import Path

import pytest

import json

from vidistill.teachers.config import HLSTMConfig, save_config
from vidistill.cli import main

pytestmark = pytest.mark.slow  # a training run, then segment evaluation, prediction and scoring


def test_segment_eval_agrees_with_predict_then_score(tmp_path, capsys, synth_data):
    data = Path(synth_data(videos=24, heldout=16, max_frames=40, segments=True).root)
    teacher = tmp_path / "teacher.yaml"
    save_config(
        HLSTMConfig(num_classes=4, frames=40, chunks=4, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1),
        str(teacher),
    )
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--data",
                str(data / "train-*"),
                "--teacher",
                str(teacher),
                "--frames",
                "6",
                "--steps",
                "4",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    held_out = str(data / "validate-*")
    capsys.readouterr()
    assert main(["eval", str(run), "--data", held_out, "--segments", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    csv = tmp_path / "segments.csv"
    assert main(["predict", str(run), "--data", held_out, "--segments", "--out", str(csv)]) == 0
    lines = csv.read_text().splitlines()
    assert lines[0] == "Class,Segments" and [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2", "3"]
    capsys.readouterr()
    assert (
        main(["score", "--predictions", str(csv), "--data", held_out, "--segments", "--num-classes", "4", "--json"])
        == 0
    )
    scored = json.loads(capsys.readouterr().out)
    assert scored == evaluated and 0.0 < scored["map"] <= 1.0 and scored["num_classes_scored"] >= 1
    # every 5-frame chunk of every held-out video is in the CSV (ids vid:start, starts multiples of 5)
    ids = lines[1].split(",")[1].split()
    assert all(int(i.split(":")[1]) % 5 == 0 for i in ids) and len(set(ids)) == len(ids)
    # shift test-time augmentation: the same windows, the same averages, in both
    shifted = {}
    for command in ("eval", "predict"):
        out = ["--out", str(tmp_path / "shifted.csv")] if command == "predict" else ["--json"]
        capsys.readouterr()
        assert main([command, str(run), "--data", held_out, "--segments", "--shift", "-1,0,1", *out]) == 0
        shifted[command] = capsys.readouterr().out
    argv = ["score", "--predictions", str(tmp_path / "shifted.csv"), "--data", held_out, "--segments"]
    assert main([*argv, "--num-classes", "4", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored == json.loads(shifted["eval"]) and 0.0 < scored["map"] <= 1.0
    assert (tmp_path / "shifted.csv").read_text() != csv.read_text()  # the shifts changed the scores
