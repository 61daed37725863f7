"""`vidistill bench-scale` (bench/scale.py): the stage plan, the per-stage measurement in a child process (its own
peak memory, exit code, kill), the budget, and a whole run with a stand-in CLI: a failed stage stops the stages
that need it, a rerun keeps what was done, a stage over the budget is reported."""

from __future__ import annotations

import json
import os
import sys

import pytest

from vidistill.bench import scale
from vidistill.bench.scale import ScaleConfig, memory_budget, run_child, run_scale, stages
from vidistill.yt8m.errors import ConfigError

MB = 10**6


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_child_measures_the_child_alone(tmp_path):
    # a vforked child's ru_maxrss counts its parent's highest resident size: this must not show
    ballast = b"x" * (300 * MB)
    log = str(tmp_path / "child.log")
    code, seconds, peak = run_child(_python("import sys; b = b'y' * 400_000_000; print('done'); sys.exit(3)"), log)
    assert code == 3 and seconds > 0
    assert 400 * MB < peak < 550 * MB
    assert open(log).read() == "done\n"
    assert len(ballast) == 300 * MB


def test_a_killed_child_is_named(tmp_path):
    log = str(tmp_path / "child.log")
    code, _, _ = run_child(_python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), log)
    assert code == -9
    assert scale._note(code, log) == "killed (signal 9): out of memory?"


def test_the_training_floor_counts_weights_slots_and_gradients_of_both_networks():
    # netvlad-willow at full width: 321.5 M parameters each, 10.3 GB, against a budget of 12.3 GB
    assert scale.training_floor(4 * 643_082_000) == 4 * 4 * 643_082_000
    assert scale.training_floor(4 * 643_082_000) < scale.memory_budget(4 * 321_541_000)


def test_the_budget_is_the_issues():
    assert memory_budget(4 * 143_271_128) / 1e9 == pytest.approx(6.58, abs=0.01)  # hlstm-paper
    assert memory_budget(4 * 88_970_274) / 1e9 == pytest.approx(4.85, abs=0.01)  # nextvlad-paper


def test_the_plan_covers_every_stage_and_precision(tmp_path):
    plan = stages(ScaleConfig(preset="hlstm-paper", out=str(tmp_path)))
    names = [s.name for s in plan]
    assert names[:4] == ["synth", "train (parallel, 1 step)", "convert", "finetune (1 step)"]
    exports = [n for n in names if n.startswith("export student")]
    assert len(exports) == 8 and exports[0] == "export student fp32"
    bench = plan[-1]
    assert bench.name == "bench" and bench.argv[:2] == ["bench", str(tmp_path / "export-teacher" / "tf-fp32")]
    assert bench.argv[bench.argv.index("--baseline") + 1] == str(tmp_path / "export-teacher" / "tf-fp32")
    assert str(tmp_path / "export-student" / "int8-qat.onnx") in bench.optional
    assert str(tmp_path / "export-student" / "int8-qat.onnx") not in bench.arguments()  # absent: left out
    train = plan[1].argv
    assert train[train.index("--teacher") + 1] == "hlstm-paper" and train[train.index("--frames") + 1] == "30"
    with pytest.raises(ConfigError, match="--precision: unknown int4"):
        ScaleConfig(preset="p", out="o", precisions=("fp32", "int4"))


FAKE_CLI = r"""
import json, sys
argv = sys.argv[1:]
if argv[0] == "models":
    print("chatter before the JSON")
    print(json.dumps({"teacher": {"parameters": 1000}, "student": {"parameters": 900}}))
    sys.exit(0)
with open(FAILS) as f:
    fails = json.load(f)
if argv[0] in fails:
    print(f"vidistill {argv[0]}: error: it broke")
    sys.exit(2)
ballast = b"x" * (BIG if argv[0] == "train" else 1)
print("ok")
"""


def test_a_run_stops_what_a_failure_blocks_and_a_rerun_keeps_what_was_done(tmp_path, monkeypatch):
    fails = tmp_path / "fails.json"
    fails.write_text(json.dumps(["convert"]))
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI.replace("FAILS", repr(str(fails))).replace("BIG", str(300 * MB)))
    monkeypatch.setattr(scale, "vidistill_command", lambda argv: [sys.executable, str(script), *argv])
    monkeypatch.setattr(scale, "BUDGET_FIXED", 150 * MB)
    config = ScaleConfig(preset="hlstm-paper", out=str(tmp_path / "out"), precisions=("fp32", "int8-dynamic"))
    lines = []
    first = run_scale(config, echo=lines.append)
    ran = {r.stage: r for r in first.results}
    assert ran["convert"].exit_code == 2 and ran["convert"].note == "vidistill convert: error: it broke"
    assert "finetune (1 step)" not in ran and "bench" not in ran  # blocked by convert (bench by the student)
    assert ran["export teacher tf-fp32 (+ fp32)"].ok  # needs only the training run
    assert not ran["train (parallel, 1 step)"].within_budget and ran["synth"].within_budget
    assert "  finetune (1 step): not run (convert failed)" in lines
    report = open(os.path.join(config.out, "scale.md")).read()
    assert "over the budget: train (parallel, 1 step)" in report and "failed: convert" in report
    assert "| convert " in report and "**failed**: vidistill convert: error: it broke" in report
    # 1000 + 900 parameters: 4 x 7,600 bytes = 30.4 kB, against the budget 150 MB + 8 x 4,000 bytes
    assert "Adam's two slots and the gradients of both networks: 4 x 0 MB = 0.0 GB" in report
    assert "0.2 GB under the budget." in report

    fails.write_text("[]")
    lines.clear()
    second = run_scale(config, echo=lines.append)
    assert [line for line in lines if "done before" in line] == [
        f"  {name}: done before ({ran[name].finished}), kept"
        for name in ("synth", "train (parallel, 1 step)", "export teacher tf-fp32 (+ fp32)")
    ]
    assert all(r.ok for r in second.results) and second.results[-1].stage == "bench"

    # a stage whose input is made again runs again, even with its command unchanged
    os.remove(os.path.join(config.out, "stages", "01-train--parallel--1-step.json"))
    lines.clear()
    run_scale(config, echo=lines.append)
    kept = [line for line in lines if "done before" in line]
    assert kept == [f"  synth: done before ({ran['synth'].finished}), kept"]
    assert json.load(open(os.path.join(config.out, "scale-config.json")))["precisions"] == ["fp32", "int8-dynamic"]
