"""One public face: a wheel of the project installs `vidistill` alone at the top level, and its public API imports
from that installed copy, outside the source tree, with TensorFlow loaded only by the names that need it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import vidistill

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r"""
import importlib.util, json, sys
import vidistill
result = {"file": vidistill.__file__, "path": list(vidistill.__path__)}
result["tf_after_import"] = "tensorflow" in sys.modules
predictor, metrics, parser = vidistill.Predictor, vidistill.VideoMetrics, None
import vidistill.cli
vidistill.cli.build_parser()
result["tf_after_predictor_metrics_cli"] = "tensorflow" in sys.modules
result["registry"] = __import__("vidistill.teachers.registry", fromlist=["x"]).__file__
result["old_names"] = {n: importlib.util.find_spec(n) is not None
                       for n in ("yt8m", "teachers", "students", "distill", "export", "bench")}
result["build_model"] = vidistill.build_model.__module__
print(json.dumps(result))
"""


def test_public_names_resolve_to_their_modules():
    for name in vidistill._PUBLIC:
        assert getattr(vidistill, name) is not None, name
    assert vidistill.export_model.__name__ == "export" and vidistill.run_benchmark.__name__ == "run_benchmark"
    assert vidistill.convert.__name__ == "convert_run"
    assert set(vidistill.__all__) == {"__version__", *vidistill._PUBLIC}
    with pytest.raises(AttributeError, match="module 'vidistill' has no attribute 'nope'"):
        vidistill.nope  # noqa: B018


def test_the_wheel_installs_vidistill_alone_and_its_api_imports_outside_the_tree(tmp_path):
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    # a copy of the checkout (setuptools builds in the tree it is given: it leaves build/ and *.egg-info there)
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "runs", "build", "*.egg-info", "__pycache__"))
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("vidistill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"vidistill", wheel.name.split("-py")[0] + ".dist-info"}
    for expected in (
        "vidistill/teachers/registry.py",
        "vidistill/yt8m/readers.py",
        "vidistill/export/predictor.py",
        "vidistill/export/qat/scheme.py",
        "vidistill/bench/gpu/run.sh",
        "vidistill/commands/bench.py",
    ):
        assert expected in names
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # -S: no site-packages processing, so the editable install's finder does not see the checkout; the
    # dependencies come from the environment's site-packages, placed after the installed wheel
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]))
    run = subprocess.run(
        [sys.executable, "-S", "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(site)) and result["path"] == [str(site / "vidistill")]
    assert result["registry"].startswith(str(site / "vidistill" / "teachers"))
    assert not any(result["old_names"].values()), result["old_names"]
    assert not result["tf_after_import"] and not result["tf_after_predictor_metrics_cli"]
    assert result["build_model"] == "vidistill.teachers.registry"
