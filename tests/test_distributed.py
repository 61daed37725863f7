"""Scale-out: two workers (two processes on localhost, MultiWorkerMirroredStrategy through TF_CONFIG) train one
run and finish with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf  # noqa: E402

from vidistill.cli import main


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


CONFIG = """train:
  mode: parallel
  teacher: {family: hlstm, num_classes: 4, frames: 30, chunks: 3, lower_cells: 8, upper_cells: 8,
            lower_layers: 1, upper_layers: 1}
  student: {model: {family: hlstm, num_classes: 4, frames: 6, chunks: 2, lower_cells: 8, upper_cells: 8,
            lower_layers: 1, upper_layers: 1}, policy: uniform}
  data: {train: "%s", max_frames: 30, batch_size: 8}
  steps: 6
  checkpoint_every: 3
  eval_every: 0
"""


def test_two_workers_finish_with_identical_weights(tmp_path):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--videos", "32", "--classes", "4", "--min-frames", "30",
                 "--max-frames", "30", "--shards", "2", "--workers", "1"]) == 0  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG % (data / "train-*.tfrecord"))
    run_dir = tmp_path / "run"
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        env["CUDA_VISIBLE_DEVICES"] = ""
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "vidistill.cli", "train", "--config", str(config), "--out", str(run_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
        assert "2 replica(s) in sync" in out, out[-3000:]  # MultiWorkerMirroredStrategy (CollectiveAllReduce)

    chief = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    worker = tf.train.latest_checkpoint(str(run_dir / "workers" / "1" / "checkpoints"))
    assert chief.endswith("ckpt-6") and worker.endswith("ckpt-6")
    chief_reader, worker_reader = tf.train.load_checkpoint(chief), tf.train.load_checkpoint(worker)
    names = [n for n in chief_reader.get_variable_to_shape_map() if "/.ATTRIBUTES/VARIABLE_VALUE" in n]
    weights = [n for n in names if ("teacher" in n or "student" in n) and "OPTIMIZER_SLOT" not in n]
    assert len(weights) > 10
    for name in names:
        np.testing.assert_array_equal(chief_reader.get_tensor(name), worker_reader.get_tensor(name), err_msg=name)
    assert os.path.exists(run_dir / "config.yaml") and not os.path.exists(run_dir / "workers" / "1" / "config.yaml")
