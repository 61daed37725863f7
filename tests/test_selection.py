"""Frame-selection policies (students.selection): exact indices, short videos, padding, randomness, graph mode."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

import vidistill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras as keras

from vidistill.students.selection import (
    POLICIES,
    FrameSelector,
    fml_block_sizes,
    select_frames,
    selection_indices,
)

DETERMINISTIC = tuple(p for p in POLICIES if p != "random")


def _indices(n, k, policy, **kw):
    idx, counts = selection_indices(tf.constant(n, tf.int32), k, policy, **kw)
    return idx.numpy(), counts.numpy()


def _valid(n, k, policy, **kw):
    """The valid indices of a single video of n frames."""
    idx, counts = _indices([n], k, policy, **kw)
    return idx[0, : counts[0]].tolist()


def _frames(nums, t, d=3, pad_value=999.0):
    """[B, t, d] frames whose real rows hold 1 + the frame index (in every feature), padding rows pad_value."""
    out = np.full((len(nums), t, d), pad_value, np.float32)
    for b, n in enumerate(nums):
        out[b, :n, :] = (1.0 + np.arange(n, dtype=np.float32))[:, None]
    return tf.constant(out)


def _reference(n: int, k: int, policy: str) -> list[int]:
    """Plain-Python reference of the deterministic policies."""
    if n < k:
        return list(range(n))
    if policy == "uniform":
        return [i * n // k for i in range(k)]
    if policy == "first":
        return list(range(k))
    if policy == "last":
        return list(range(n - k, n))
    if policy == "middle":
        s = (n - k) // 2
        return list(range(s, s + k))
    if policy == "fml":
        s0, s1, s2 = fml_block_sizes(k)
        mid = min(max((n - s1) // 2, s0), n - s2 - s1)
        return list(range(s0)) + list(range(mid, mid + s1)) + list(range(n - s2, n))
    raise AssertionError(policy)


# ------------------------------------------------------------------------------------------------ hand cases


def test_uniform_hand_cases():
    assert _valid(300, 30, "uniform") == list(range(0, 300, 10))  # the paper's every_n = 10
    assert _valid(10, 4, "uniform") == [0, 2, 5, 7]
    # a 90-frame video padded to 300 is sampled within its 90 frames
    selected, counts = select_frames(_frames([90], 300), tf.constant([90]), 30, "uniform")
    assert counts.numpy().tolist() == [30]
    assert (selected.numpy()[0, :, 0] - 1).astype(int).tolist() == list(range(0, 90, 3))


def test_first_middle_last_fml_hand_cases():
    assert _valid(20, 6, "first") == [0, 1, 2, 3, 4, 5]
    assert _valid(20, 6, "middle") == [7, 8, 9, 10, 11, 12]
    assert _valid(20, 6, "last") == [14, 15, 16, 17, 18, 19]
    assert _valid(20, 6, "fml") == [0, 1, 9, 10, 18, 19]
    assert _valid(21, 6, "middle") == [7, 8, 9, 10, 11, 12]
    assert _valid(300, 30, "middle") == list(range(135, 165))


def test_fml_block_sizes_and_odd_k():
    assert fml_block_sizes(6) == (2, 2, 2)
    assert fml_block_sizes(7) == (3, 2, 2)
    assert fml_block_sizes(8) == (3, 3, 2)
    assert fml_block_sizes(2) == (1, 1, 0)
    assert fml_block_sizes(1) == (1, 0, 0)
    assert _valid(20, 7, "fml") == [0, 1, 2, 9, 10, 18, 19]
    assert _valid(20, 2, "fml") == [0, 9]
    assert _valid(20, 1, "fml") == [0]
    assert _valid(300, 30, "fml") == list(range(10)) + list(range(145, 155)) + list(range(290, 300))
    # barely longer than k: the middle block is pushed off the first one, never overlapping
    assert _valid(5, 4, "fml") == [0, 1, 2, 4]
    assert _valid(4, 4, "fml") == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------ properties


@pytest.mark.parametrize("policy", POLICIES)
def test_indices_in_range_increasing_over_many_lengths(policy):
    rng = np.random.default_rng(0)
    nums = np.concatenate([np.arange(0, 40), rng.integers(0, 400, size=200)]).astype(np.int32)
    for k in (1, 2, 3, 5, 6, 7, 10, 15, 20, 30, 64):
        idx, counts = _indices(nums, k, policy)
        assert idx.shape == (len(nums), k) and idx.dtype == np.int32
        assert counts.tolist() == np.minimum(nums, k).tolist()
        for n, row, c in zip(nums, idx, counts):
            valid = row[:c]
            assert np.all(valid >= 0) and np.all(valid < n), (policy, n, k, row)
            assert np.all(np.diff(valid) > 0), (policy, n, k, row)
            assert np.all(row[c:] == 0)
            if policy != "random":
                assert valid.tolist() == _reference(int(n), k, policy), (policy, n, k)


@pytest.mark.parametrize("policy", POLICIES)
def test_short_videos_give_all_real_frames_then_zeros(policy):
    nums = [3, 0, 7, 1, 8]
    k = 8
    selected, counts = select_frames(_frames(nums, 12), tf.constant(nums), k, policy, training=True, seed=1)
    selected = selected.numpy()
    assert selected.shape == (len(nums), k, 3)
    assert counts.numpy().tolist() == nums
    for b, n in enumerate(nums):
        assert selected[b, :n, 0].tolist() == [float(i + 1) for i in range(n)]
        assert np.all(selected[b, n:] == 0.0)


def test_empty_videos_and_bad_lengths():
    selected, counts = select_frames(_frames([0, 0], 5), tf.constant([0, 0]), 4, "uniform")
    assert counts.numpy().tolist() == [0, 0]
    assert np.all(selected.numpy() == 0.0)
    # static T == 0
    selected, counts = select_frames(tf.zeros([2, 0, 3]), tf.constant([0, 0]), 4, "random")
    assert selected.shape == (2, 4, 3) and np.all(selected.numpy() == 0.0)
    # num_frames beyond T is clipped to T; negative to 0; [B, 1] accepted
    selected, counts = select_frames(_frames([5, 2], 5), tf.constant([[9], [-3]]), 3, "last")
    assert counts.numpy().tolist() == [3, 0]
    assert selected.numpy()[0, :, 0].tolist() == [3.0, 4.0, 5.0]
    assert np.all(selected.numpy()[1] == 0.0)


@pytest.mark.parametrize("policy", POLICIES)
def test_padding_invariance(policy):
    nums = [50, 17, 3, 0, 42, 30]
    a, ca = select_frames(_frames(nums, 50, pad_value=-7.0), tf.constant(nums), 10, policy, seed=5)
    b, cb = select_frames(_frames(nums, 300, pad_value=-4.0), tf.constant(nums), 10, policy, seed=5)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(ca.numpy(), cb.numpy())
    assert not np.any(np.isin(a.numpy(), [-7.0, -4.0]))  # padding rows are never selected


def test_selected_rows_are_the_indexed_frames():
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(4, 40, 5)).astype(np.float32)
    nums = np.array([40, 13, 2, 29], np.int32)
    for policy in POLICIES:
        idx, counts = _indices(nums, 6, policy)
        selected, _ = select_frames(tf.constant(frames), tf.constant(nums), 6, policy)
        for b in range(4):
            c = counts[b]
            np.testing.assert_array_equal(selected.numpy()[b, :c], frames[b, idx[b, :c]])


# ------------------------------------------------------------------------------------------------ random


def test_random_training_fresh_inference_fixed():
    nums = tf.constant([300, 300, 120])
    t1, _ = _indices(nums, 30, "random", training=True, seed=3)
    t2, _ = _indices(nums, 30, "random", training=True, seed=3)
    assert not np.array_equal(t1[0], t2[0])
    assert not np.array_equal(t1[0], t1[1])  # rows are independent in training
    i1, _ = _indices(nums, 30, "random", seed=3)
    i2, _ = _indices(nums, 30, "random", seed=3)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(i1[0], i1[1])  # a function of (n, seed) only, not of the batch position
    i_alone, _ = _indices([120], 30, "random", seed=3)
    np.testing.assert_array_equal(i1[2], i_alone[0])
    other, _ = _indices(nums, 30, "random", seed=4)
    assert not np.array_equal(i1[0], other[0])
    default1, _ = _indices(nums, 30, "random")
    default2, _ = _indices(nums, 30, "random", training=False)
    np.testing.assert_array_equal(default1, default2)
    for row in np.concatenate([t1, t2, i1]):
        assert len(set(row.tolist())) == 30 and np.all(np.diff(row) > 0)


def test_random_training_inside_tf_function_changes_per_call():
    f = tf.function(lambda n: selection_indices(n, 10, "random", training=True, seed=1)[0])
    a, b = f(tf.constant([200])).numpy(), f(tf.constant([200])).numpy()
    assert not np.array_equal(a, b)
    g = tf.function(lambda n: selection_indices(n, 10, "random", seed=1)[0])
    np.testing.assert_array_equal(g(tf.constant([200])).numpy(), g(tf.constant([200])).numpy())
    np.testing.assert_array_equal(g(tf.constant([200])).numpy(), _indices([200], 10, "random", seed=1)[0])


def test_random_training_flag_tensor_and_generator():
    flag_true = selection_indices(tf.constant([500]), 20, "random", training=tf.constant(True), seed=2)[0]
    flag_false = selection_indices(tf.constant([500]), 20, "random", training=tf.constant(False), seed=2)[0]
    np.testing.assert_array_equal(flag_false.numpy(), _indices([500], 20, "random", seed=2)[0])
    assert not np.array_equal(flag_true.numpy(), flag_false.numpy())
    g1, g2 = tf.random.Generator.from_seed(9), tf.random.Generator.from_seed(9)
    a = selection_indices(tf.constant([500, 500]), 20, "random", training=True, rng=g1)[0].numpy()
    b = selection_indices(tf.constant([500, 500]), 20, "random", training=True, rng=g2)[0].numpy()
    np.testing.assert_array_equal(a, b)  # reproducible from the generator's state
    c = selection_indices(tf.constant([500, 500]), 20, "random", training=True, rng=g1)[0].numpy()
    assert not np.array_equal(a, c)


def test_random_is_roughly_uniform():
    draws = 12000
    idx, counts = _indices(np.full(draws, 10, np.int32), 3, "random", training=True, seed=0)
    assert np.all(counts == 3)
    freq = np.bincount(idx.ravel(), minlength=10) / draws
    np.testing.assert_allclose(freq, 0.3, atol=0.03)  # each frame is in 3 of 10 positions
    subsets = Counter(map(tuple, idx.tolist()))
    assert len(subsets) == 120  # C(10, 3): every subset occurs
    expected = draws / 120
    assert min(subsets.values()) > 0.5 * expected and max(subsets.values()) < 1.5 * expected
    # the deterministic inference draw is also well spread over (n, seed)
    lengths = np.repeat(np.arange(10, 410), 10).astype(np.int32)
    idx, _ = _indices(lengths, 5, "random", seed=123)
    rel = (idx / lengths[:, None]).ravel()
    hist = np.histogram(rel, bins=10, range=(0, 1))[0] / rel.size
    np.testing.assert_allclose(hist, 0.1, atol=0.02)


# ------------------------------------------------------------------------------------------------ graph mode, Keras


@pytest.mark.parametrize("jit", [False, True])
def test_tf_function_unknown_batch_and_time(jit):
    nums = [50, 17, 3, 0]
    frames = _frames(nums, 60)
    for policy in POLICIES:

        @tf.function(
            input_signature=[tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([None], tf.int32)],
            jit_compile=jit,
        )
        def f(x, n):
            return select_frames(x, n, 7, policy, seed=11)  # noqa: B023 - traced right away, in this iteration

        got, counts = f(frames, tf.constant(nums))
        want, want_counts = select_frames(frames, tf.constant(nums), 7, policy, seed=11)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        np.testing.assert_array_equal(counts.numpy(), want_counts.numpy())
        assert f.get_concrete_function().structured_outputs[0].shape.as_list() == [None, 7, 3]


def test_frame_selector_layer_and_config():
    layer = FrameSelector(6, "fml", seed=4, name="sel")
    config = layer.get_config()
    assert config["k"] == 6 and config["policy"] == "fml" and config["seed"] == 4
    clone = FrameSelector.from_config(config)
    assert (clone.k, clone.policy, clone.seed, clone.name) == (6, "fml", 4, "sel")
    frames = keras.Input(shape=(None, 3))
    num = keras.Input(shape=(), dtype="int32")
    selected, counts = FrameSelector(6, "uniform")(frames, num)
    model = keras.Model([frames, num], [selected, counts])
    x = _frames([20, 4], 30)
    out, c = model.predict([x, tf.constant([20, 4])], verbose=0)
    assert out[:, :, 0].tolist() == [[1, 4, 7, 11, 14, 17], [1, 2, 3, 4, 0, 0]]
    assert c.tolist() == [6, 4]
    # the layer survives a model config round trip
    rebuilt = keras.Model.from_config(model.get_config(), custom_objects={"FrameSelector": FrameSelector})
    np.testing.assert_array_equal(rebuilt.predict([x, tf.constant([20, 4])], verbose=0)[0], out)


def test_frame_selector_training_flag():
    layer = FrameSelector(10, "random", seed=1)
    x, n = _frames([300], 300), tf.constant([300])
    a, b = layer(x, n, training=True)[0].numpy(), layer(x, n, training=True)[0].numpy()
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(layer(x, n)[0].numpy(), layer(x, n, training=False)[0].numpy())


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("k", [0, -3, 2.5, "6", None, True])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        selection_indices(tf.constant([10]), k, "uniform")
    with pytest.raises(ValueError, match="k"):
        select_frames(tf.zeros([1, 10, 2]), tf.constant([10]), k, "uniform")
    with pytest.raises(ValueError, match="k"):
        FrameSelector(k, "uniform")


@pytest.mark.parametrize("policy", ["bogus", "Uniform", "", None])
def test_bad_policy(policy):
    for call in (
        lambda: selection_indices(tf.constant([10]), 3, policy),
        lambda: select_frames(tf.zeros([1, 10, 2]), tf.constant([10]), 3, policy),
        lambda: FrameSelector(3, policy),
    ):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert repr(policy) in message
        assert all(p in message for p in POLICIES)


def test_numpy_int_k_accepted():
    assert _valid(300, np.int64(30), "uniform") == list(range(0, 300, 10))
    assert list(itertools.islice(POLICIES, 6)) == ["uniform", "random", "first", "middle", "last", "fml"]
