"""The demo's stage bookkeeping (vidistill/pipeline.py): one completion marker per stage, written atomically; a
killed stage's partial output is removed before it runs again, a resumable one (training) keeps it."""

from __future__ import annotations

import json
import os

import pytest

from vidistill.pipeline import Demo, DemoConfig, run_demo


class Killed(Exception):
    pass


def _writer(out: str, calls: list, *, fail: bool = False):
    def stage():
        calls.append(sorted(os.listdir(out)) if os.path.exists(out) else None)  # what the stage found
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"part{len(calls)}"), "w") as f:
            f.write("x")
        if fail:
            raise Killed("killed half-way")
        return {"files": sorted(os.listdir(out))}

    return stage


def test_a_finished_stage_is_skipped_and_returns_its_saved_result(tmp_path):
    demo = Demo(DemoConfig.quick(), str(tmp_path / "demo"))
    out, calls = demo.path("export", "student"), []
    assert demo.once("export-student", out, _writer(out, calls)) == {"files": ["part1"]}
    marker = json.loads(open(demo.marker("export-student")).read())
    assert marker["stage"] == "export-student" and marker["output"] == out
    assert marker["result"] == {"files": ["part1"]} and marker["seconds"] >= 0
    assert demo.once("export-student", out, _writer(out, calls)) == {"files": ["part1"]}
    assert calls == [None]  # not run again
    assert sorted(os.listdir(os.path.dirname(demo.marker("x")))) == ["export-student.json"]  # no temporary file


def test_a_killed_stage_leaves_no_marker_and_starts_clean(tmp_path):
    demo = Demo(DemoConfig.quick(), str(tmp_path / "demo"))
    out, calls = demo.path("students", "k10"), []
    with pytest.raises(Killed):
        demo.once("convert-k10", out, _writer(out, calls, fail=True))
    assert not os.path.exists(demo.marker("convert-k10"))
    assert os.listdir(out) == ["part1"]  # the partial output is there ...
    assert demo.once("convert-k10", out, _writer(out, calls)) == {"files": ["part2"]}
    assert calls == [None, None]  # ... and removed before the stage ran again


def test_a_resumable_stage_keeps_what_it_left(tmp_path):
    demo = Demo(DemoConfig.quick(), str(tmp_path / "demo"))
    out, calls = demo.path("runs", "parallel-k10"), []
    with pytest.raises(Killed):
        demo.once("train-parallel-k10", out, _writer(out, calls, fail=True), resumable=True)
    assert demo.once("train-parallel-k10", out, _writer(out, calls), resumable=True) == {"files": ["part1", "part2"]}
    assert calls == [None, ["part1"]]


def test_run_demo_refuses_a_non_empty_out_without_resume_or_overwrite(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty: pass --resume to continue it, --overwrite"):
        run_demo(str(tmp_path), quick=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_the_demo_states_its_time_for_this_kind_of_machine():
    from vidistill.pipeline import DEMO_MINUTES, time_estimate

    kind = "avx512" if " avx512f" in open("/proc/cpuinfo").read() else "avx2"
    line = time_estimate(quick=False)
    assert line.startswith(f"demo: about {DEMO_MINUTES[False][kind]:g} minutes here (")
    assert "on 2 cores: 8.3 min with AVX512, 13.2 min with AVX2;" in line
    quick = time_estimate(quick=True)
    assert quick.startswith(f"quick demo: about {DEMO_MINUTES[True][kind]:g} minutes here (")
    assert "1.7 min with AVX512, 2.5 min with AVX2 (estimated);" in quick
