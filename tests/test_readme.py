"""The README can never rot: every `vidistill` command in its bash blocks runs, in order, on tiny data.

Sizes are shrunk by the rules in `tiny()` (fewer videos and steps, the demo and Table 1 in their quick forms,
short benchmarks); the real-data workflow runs on synthetic records with the official 3862 classes put where the
README says the official files go. The demo runs here in its `--quick` form, and its final table must appear.
"""

from __future__ import annotations

import glob
import os
import re
import shlex

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from vidistill.cli import main

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _blocks(language: str) -> list[str]:
    text = open(README).read()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def readme_commands() -> list[str]:
    """The `vidistill ...` command lines of the bash blocks, continuation lines joined, in README order."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("vidistill "):
                    commands.append(part)
    return commands


TINY_TEACHER = "tiny-hlstm.yaml"  # written by the test: hlstm-small's shape (300 frames, 20 chunks) with 8 cells


def tiny(command: str) -> str:
    """The same command at test size."""
    name = command.split()[1]
    command = re.sub(r"--teacher hlstm-(small|paper)", f"--teacher {TINY_TEACHER}", command)
    command = re.sub(r"--steps \d+", "--steps 2", command)
    command = re.sub(r"--videos \d+", "--videos 24", command)
    if name in ("train", "finetune"):
        command += " --batch-size 4" + ("" if "--steps" in command else " --steps 2")
    if name == "demo" or (name == "experiment" and "--quick" not in command):
        command += " --quick"
    if name == "export":
        command += " --qat-steps 2 --calibration-batches 1 --batch-size 8"
    if name == "bench-scale":  # the tiny teacher, two precisions, short timings: the orchestration, not the sizes
        command = re.sub(r"--preset \S+", f"--preset {TINY_TEACHER}", command)
        command += " --precision fp32,int8-dynamic --videos 8 --heldout 4 --bench-batch 1 --bench-duration 0.2"
    if name == "bench":
        command = (
            re.sub(r"--batch [\d,]+", "--batch 1,2", command) + " --runs 3 --warmup 1 --no-profile --peak-size 128"
        )
    return command


def _argv(command: str) -> list[str]:
    tokens = shlex.split(command)[1:]
    argv = []
    for i, token in enumerate(tokens):  # what the shell would glob (quoted patterns follow an --option)
        if "*" in token and not (i and tokens[i - 1].startswith("--")):
            matches = sorted(glob.glob(token))
            assert matches, f"{token} matched nothing"
            argv += matches
        else:
            argv.append(token)
    return argv


def test_the_readme_lists_the_stages():
    names = [c.split()[1] for c in readme_commands()]
    for stage in ("demo", "synth", "train", "convert", "finetune", "eval", "predict", "export", "bench"):
        assert stage in names, f"the README shows no `vidistill {stage}` command"


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    from vidistill.teachers.config import HLSTMConfig, save_config

    monkeypatch.chdir(tmp_path)
    save_config(
        HLSTMConfig(
            num_classes=100, frames=300, chunks=20, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1
        ),
        TINY_TEACHER,
    )
    # where the README tells users to put the official files: synthetic records with the official vocabulary
    assert (
        main(
            ["synth", "--out", "yt8m/frame", "--videos", "24", "--heldout", "12", "--classes", "3862", "--workers", "1"]
            + ["--segments"]  # segment-rated, as the 2019 validate files: the segment commands run too
        )
        == 0
    )
    capsys.readouterr()
    import time

    seconds = []
    for command in readme_commands():
        small = tiny(command)
        started = time.perf_counter()
        code = main(_argv(small))
        seconds.append((round(time.perf_counter() - started, 1), small))
        out, err = capsys.readouterr()
        assert code == 0, f"README command failed: {command}\n(run as: {small})\n{err[-3000:]}"
        if small.startswith("vidistill demo"):
            assert "speed-up" in out and "teacher-60f/tf-fp32" in out and "student-k10/int8-dynamic" in out, out
            assert "The demo worked: every stage ran" in out and "student-k4/fp32" in out, out
            assert os.path.exists("runs/demo/bench/pareto.png") and os.path.exists("runs/demo/summary.md")
    print("\n".join(f"{s:7.1f} s  {c}" for s, c in seconds))  # shown with -s: where the time goes


def test_the_predictor_snippet_runs(tmp_path, monkeypatch):
    """The README's Python example for the Predictor, on a tiny export made here."""
    from vidistill.students.convert import save_student
    from vidistill.students.student import build_student, student_config
    from vidistill.teachers.config import HLSTMConfig

    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--out", "yt8m/frame", "--videos", "12", "--classes", "3862", "--workers", "1"]) == 0
    teacher = HLSTMConfig(
        num_classes=3862, frames=300, chunks=20, lower_cells=8, upper_cells=8, lower_layers=1, upper_layers=1
    )
    config = student_config(teacher, k=30)
    save_student(build_student(config), config, "students/k30-ft")
    assert main(["export", "students/k30-ft", "--out", "export/k30", "--precision", "int8-dynamic"]) == 0
    snippet = next(b for b in _blocks("python") if "Predictor(" in b)
    namespace = {"video": np.random.default_rng(0).integers(0, 256, (45, 1152), dtype=np.uint8)}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["probabilities"].shape == (1, 3862)


def test_the_other_python_snippets_run(tmp_path, monkeypatch):
    """Every other Python example of the README runs as written (the data readers on small synthetic files in the
    folders it names; the models; a new loss term, which then computes): user code imports only `vidistill`."""
    from vidistill.distill.terms import LOSS_TERMS
    from vidistill.yt8m.records import write_video_level_records

    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "synth",
                "--out",
                "yt8m/frame",
                "--videos",
                "8",
                "--heldout",
                "4",
                "--classes",
                "3862",
                "--segments",
                "--min-frames",
                "30",
                "--max-frames",
                "40",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    os.makedirs("yt8m/video")
    rng = np.random.default_rng(1)
    videos = [
        {"id": f"v{i}", "labels": [i, 3861], "rgb": rng.normal(size=(5, 1024)), "audio": rng.normal(size=(5, 128))}
        for i in range(4)
    ]
    write_video_level_records("yt8m/video/validate0.tfrecord", videos)
    snippets = [b for b in _blocks("python") if "Predictor(" not in b]
    assert len(snippets) == 3, "a new Python example in the README: run it here too"
    for snippet in snippets:
        namespace: dict = {}
        try:
            exec(compile(snippet, "README.md", "exec"), namespace)
            for line in snippet.splitlines():  # the snippets import from vidistill alone
                if line.startswith(("import ", "from ")):
                    assert line.split()[1].split(".")[0] in ("vidistill", "tensorflow"), line
            if "register_loss_term" in snippet:
                assert LOSS_TERMS["rep_cosine"] is namespace["CosineRepresentation"]
                rng = np.random.default_rng(0)
                outputs = {
                    "predictions": rng.uniform(0.1, 0.9, (3, 5)).astype(np.float32),
                    "representation": rng.normal(size=(3, 4)).astype(np.float32),
                }
                same = namespace["loss"].student_loss(np.ones((3, 5), np.float32), outputs, outputs)
                assert float(same["rep_cosine"]) == pytest.approx(0.0, abs=1e-6)
                assert float(same["total"]) == pytest.approx(float(same["ce"]), rel=1e-6)
        finally:
            LOSS_TERMS.pop("rep_cosine", None)
