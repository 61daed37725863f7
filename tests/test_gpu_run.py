"""The GPU run's preparation and script, dry-run on the CPU (bench/gpu/): a bundle of whole files and graph-only
files, `run.sh --dry-run` filling the graphs' weights and benchmarking every file, the reports packed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile

import onnx
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from vidistill.bench.gpu.prepare import _graph_only
from vidistill.export.card import read_card
from vidistill.export.config import ExportConfig
from vidistill.export.exporter import export as export_model
from vidistill.export.source import teacher_source
from vidistill.teachers.config import HLSTMConfig
from vidistill.teachers.registry import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = HLSTMConfig(num_classes=300, frames=20, chunks=4, lower_cells=16, upper_cells=16, lower_layers=1, upper_layers=1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    work = root / "work"
    export_model(
        teacher_source(build_model(TINY), TINY, "random"),
        str(work),
        ExportConfig(precisions=["fp32", "fp16", "bf16", "int8-dynamic"], target="cuda", random_videos=4, batch_size=4),
    )
    out = root / "bundle"
    shutil.copytree(work, out / "demo-teacher")
    _graph_only(str(work), str(out / "paper-teacher"))
    return root


def test_graph_only_files_leave_their_weights_behind(bundle):
    paper = bundle / "bundle" / "paper-teacher"
    assert sorted(os.listdir(paper)) == sorted(
        f"{p}.{e}" for p in ("fp32", "fp16", "bf16", "int8-dynamic") for e in ("onnx", "json")
    )
    for precision in ("fp32", "int8-dynamic"):
        graph = onnx.load(str(paper / f"{precision}.onnx"), load_external_data=False)
        assert any(t.external_data for t in graph.graph.initializer)
        card = read_card(str(paper / f"{precision}.json"))
        assert any("graph only" in note for note in card.notes)
    # int8 weights are filled apart from fp32's: its parity reference is the file itself (CUDA against CPU)
    assert read_card(str(paper / "int8-dynamic.json")).reference == "int8-dynamic.onnx"
    assert read_card(str(paper / "fp16.json")).reference == "fp32.onnx"


def test_run_script_dry_run(bundle):
    out, reports = bundle / "out", bundle / "reports"
    env = dict(os.environ, BUNDLE=str(bundle / "bundle"), OUT=str(out), REPORTS=str(reports))
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "gpu", "run.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert [s[0] for s in steps] == ["machine", "onnxruntime", "fill", "bench-demo", "bench-paper"]
    assert all(s[2] == "0" for s in steps), steps
    assert (bundle / "bundle" / "paper-teacher" / "fp32.onnx.data").exists()  # filled there
    with tarfile.open(out / "reports.tar.gz") as packed:
        names = set(packed.getnames())
    assert {"./demo/report.md", "./paper/report.md", "./paper/rows.jsonl", "./steps.tsv"} <= names
    paper = (reports / "paper" / "report.md").read_text()
    # the dry run leaves out the cuda-made bf16 files (the CPU has no bf16 kernels for them): every row passes
    assert "paper-teacher/bf16" not in paper and "paper-teacher/fp16" in paper and "failed:" not in paper
    assert paper.count("| ok") >= 3
