"""One prediction function per model: traced once per frame count whatever the batch sizes, never kept past its
model, and evaluating model after model in one process no longer makes TensorFlow warn of retracing."""

from __future__ import annotations

import gc
import logging
import weakref

import numpy as np

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from vidistill.distill.evaluate import evaluate_model
from vidistill.teachers import inference
from vidistill.teachers.registry import build_model


def _videos(batch: int, frames: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (batch, frames, 1152)).astype(np.float32)
    n = rng.integers(1, frames + 1, batch).astype(np.int32)
    x[np.arange(frames)[None, :] >= n[:, None]] = 0
    return x, n


def test_traced_once_per_frame_count_with_the_models_own_predictions(tiny_teacher):
    model = build_model(tiny_teacher)
    for batch, seed in ((4, 0), (3, 1), (1, 2), (4, 3)):  # a smaller last batch, then the same shapes again
        x, n = _videos(batch, tiny_teacher.frames, seed)
        got = inference.predictions_of(model, x, n).numpy()
        np.testing.assert_allclose(got, model({"frames": x, "num_frames": n})["predictions"].numpy(), atol=1e-6)
    assert inference.trace_count(model) == 1
    other = build_model(tiny_teacher)
    inference.predictions_of(other, *_videos(2, tiny_teacher.frames))
    assert inference.trace_count(other) == 1 and inference.trace_count(model) == 1  # one function per model


def test_the_table_does_not_keep_a_model_alive(tiny_teacher):
    model = build_model(tiny_teacher)
    inference.predictions_of(model, *_videos(2, tiny_teacher.frames))
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_evaluating_a_model_again_traces_nothing_and_warns_of_no_retracing(tiny_teacher, synth_data, caplog):
    """Before: every evaluation made its own tf.function (with the same code), and traced it twice when the last
    batch was smaller; evaluating during training (eval_every) or model after model in one process reached five
    traces within ten calls, and TensorFlow warned "triggered tf.function retracing" (the demo's fine-tuning did)."""
    data = synth_data(heldout=10)
    model, others = build_model(tiny_teacher), [build_model(tiny_teacher) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger=tf.get_logger().name):
        for evaluated in (model, model, model, model, *others):
            metrics = evaluate_model(
                evaluated,
                data.heldout,
                num_classes=tiny_teacher.num_classes,
                max_frames=tiny_teacher.frames,
                batch_size=4,  # 10 videos: batches of 4, 4 and 2
            )
            assert metrics["num_videos"] == 10
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert [inference.trace_count(m) for m in (model, *others)] == [1, 1, 1]
