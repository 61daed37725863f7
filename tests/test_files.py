"""yt8m/files.py: atomic writes, and the one place TF_USE_LEGACY_KERAS is set. No TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vidistill.yt8m.files import atomic_write


def test_atomic_write_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "card.json"
    with atomic_write(path) as f:
        f.write("first")
    assert path.read_text() == "first" and os.listdir(tmp_path) == ["card.json"]
    with pytest.raises(RuntimeError, match="crashed"):
        with atomic_write(path) as f:
            f.write("half of the sec")
            raise RuntimeError("crashed")
    assert path.read_text() == "first" and os.listdir(tmp_path) == ["card.json"]  # the old file, no temporary
    with atomic_write(tmp_path / "new.csv", newline="") as f:
        f.write("a,b\r\n")
    assert (tmp_path / "new.csv").read_bytes() == b"a,b\r\n"


def test_a_written_file_that_fails_its_check_never_takes_the_name(tmp_path):
    path = tmp_path / "model.onnx"
    seen = []

    def check(tmp):
        seen.append(open(tmp).read())
        raise ValueError("not a model")

    with pytest.raises(ValueError, match="not a model"):
        with atomic_write(path, before_rename=check) as f:
            f.write("garbage")
    assert seen == ["garbage"] and os.listdir(tmp_path) == []  # checked whole, then neither file nor temporary


@pytest.mark.parametrize("value, expected", [(None, "1"), ("1", "1"), ("0", "0")])
def test_tf_use_legacy_keras_is_set_once_without_overwriting_the_users_value(value, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    if value is not None:
        env["TF_USE_LEGACY_KERAS"] = value
    code = "import os, vidistill.yt8m, vidistill.export.card; print(os.environ['TF_USE_LEGACY_KERAS'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_qat_says_what_to_do_when_the_users_value_turns_keras_2_off():
    env = dict(os.environ, TF_USE_LEGACY_KERAS="0")
    code = "from vidistill.export import qat"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert (
        "int8-qat needs Keras 2 (tensorflow-model-optimization), but TF_USE_LEGACY_KERAS is '0': unset it or "
        "set it to 1" in done.stderr
    )
