"""Configuration files are checked against the typed configs before anything runs: a wrong type, a float where an
integer belongs, a word where a number belongs, a YAML syntax error - one line naming the file and the option."""

from __future__ import annotations

import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from vidistill.cli import main
from vidistill.distill.config import load_train_config
from vidistill.teachers.config import load_config

CASES = {
    "steps: ten": ("train:\n  steps: ten\n", "train.steps must be an integer, got 'ten'"),
    "steps: 5.5": ("train:\n  steps: 5.5\n", "train.steps must be an integer, got 5.5"),
    "learning_rate: fast": (
        "train:\n  optimizer:\n    learning_rate: fast\n",
        "train.optimizer.learning_rate must be a number, got 'fast'",
    ),
    'batch_size: "8"': ('train:\n  data:\n    batch_size: "8"\n', "train.data.batch_size must be an integer, got '8'"),
    "mixed_precision: 1": ("train:\n  mixed_precision: 1\n", "train.mixed_precision must be true or false, got 1"),
    "a head option": (
        "train:\n  teacher: {family: hlstm, num_classes: 5, frames: 10, chunks: 2, head: {mixtures: two}}\n",
        "hlstm.head.mixtures must be an integer, got 'two'",
    ),
    "a YAML syntax error": ("train:\n  steps: [1\n", "not valid YAML (line 3, column 1)"),
    "a list": ("- 1\n- 2\n", "expected a mapping of options, got list"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_option(case, tmp_path, capsys):
    text, message = CASES[case]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_train_config(str(path))
    assert str(error.value) == f"{path}: {message}" or str(error.value).startswith(f"{path}: {message}")
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(run), "--data", "x.tfrecord"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"vidistill train: error: {path}: {message}")
    assert not run.exists()


def test_numbers_written_as_yaml_strings_are_taken_for_float_options(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "train:\n  optimizer:\n    learning_rate: 1e-3\n  loss:\n    rep: 2\n"
    )  # YAML reads 1e-3 as a string
    config = load_train_config(str(path))
    assert config.optimizer.learning_rate == 0.001 and config.loss.rep == 2


def test_model_config_files_name_the_file(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"family": "hlstm", "num_classes": 5, "frames": 10, "chunks": "two"}')
    with pytest.raises(ValueError, match=rf"^{path}: hlstm.chunks must be an integer, got 'two'$"):
        load_config(str(path))
    path.write_text('{"family": "hlstm", ')
    with pytest.raises(ValueError, match=rf"^{path}: not valid JSON \(line 1, column 21\)"):
        load_config(str(path))
