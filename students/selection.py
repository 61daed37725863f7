"""Frame-selection policies of Table 1 of the paper, as batched TensorFlow ops (any k).

A student sees only ``k`` frames of a video. This module picks them, per video, from the video's REAL frames:
``n = num_frames[b]`` (rows ``>= n`` of ``frames`` are padding and are never selected, so a 90-frame video padded to
300 rows is sampled within its 90 frames, and padding a batch to any length ``T >= n`` changes nothing).

Policies (``i = 0 .. k-1``; all of them return indices in strictly increasing temporal order):

``uniform``
    Every (n/k)-th frame: ``index_i = floor(i * n / k)``; k=30 of n=300 gives 0, 10, ..., 290 (the paper's
    ``every_n = 10``), k=4 of n=10 gives 0, 2, 5, 7.
``random``
    k distinct frames drawn uniformly without replacement (every k-subset of the n frames equally likely; Floyd's
    algorithm), returned sorted. See "Randomness" below.
``first``
    Frames ``0 .. k-1``.
``middle``
    The k frames centred on n/2: ``start = (n - k) // 2``, frames ``start .. start+k-1``.
``last``
    Frames ``n-k .. n-1``.
``fml`` (first-middle-last)
    Three contiguous blocks of sizes ``fml_block_sizes(k)``: ``k // 3`` each, plus one for each of the first
    ``k % 3`` blocks (k=6 -> 2,2,2; k=7 -> 3,2,2; k=2 -> 1,1,0; k=1 -> 1,0,0). The first block starts at frame 0,
    the third ends at frame n-1, and the middle block (size m) is centred like ``middle``:
    ``start = (n - m) // 2``, clamped into ``[size_first, n - size_last - m]`` so that it never overlaps the other
    two when the video is barely longer than k (so with n == k all frames are returned).

Short videos (``k > n``), every policy: the n real frames in order, then zero rows; the count is n. In general the
returned count is ``min(n, k)`` and selected rows at positions ``>= count`` are exactly 0.0, so a model that masks by
the count sees the same input as one that does not. ``n == 0`` gives k zero rows and count 0. Negative num_frames
are treated as 0, and in ``select_frames`` num_frames larger than T are clipped to T.

Randomness (policy ``random``; the other policies are deterministic and ignore ``training``/``seed``):

* ``training=False`` (inference/evaluation): deterministic, stateless. The draw for a video is a pure function of
  ``(n, seed)`` (``seed=None`` means seed 0): the same for every call, batch position, batch size and padding length,
  and on every device. It comes from a counter-based integer hash (lowbias32) of (seed, n, step).
* ``training=True``: a fresh draw on every call (every execution of a ``tf.function``/Keras train step). Each row gets
  two random 32-bit key words from ``tf.random.uniform(..., seed=seed)``, TensorFlow's stateful seeded op (its
  internal counter advances per call in eager mode and per execution in graph mode; reproducible under
  ``tf.random.set_seed`` with an explicit ``seed``), which then key the same hash. Pass ``rng=`` (a
  ``tf.random.Generator``) to draw the key words from that generator instead (checkpointable state, and works
  under XLA with reproducible results).
* ``training`` may also be a scalar bool tensor; both keys are computed and the right one chosen per call.

All shapes depend only on ``B``, ``k`` and ``D`` (never on the values of num_frames), no Python loop runs over the
batch; ``random`` runs a ``tf.while_loop`` of k steps over ``[B, k]`` tensors. The ops work in eager mode, inside
``tf.function`` with unknown batch size and unknown T, and under XLA (``jit_compile=True``).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras  # students/__init__.py has set TF_USE_LEGACY_KERAS=1 before TensorFlow was imported

from vidistill.students.policies import POLICIES, fml_block_sizes
from vidistill.students.policies import validate as _validate
from vidistill.yt8m.errors import ConfigError

__all__ = [
    "POLICIES",
    "FrameSelector",
    "fml_block_sizes",
    "frames_to_decode",
    "select_frames",
    "selection_indices",
]

_M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------------------
# Counter-based hashing (int64 arithmetic on 32-bit values: portable to CPU, GPU and XLA, no overflow).


def _mul32(x: tf.Tensor, c: int) -> tf.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32) and a Python constant c < 2**32, without int64 overflow."""
    lo = tf.bitwise.bitwise_and(x, 0xFFFF)
    hi = tf.bitwise.right_shift(x, 16)
    hi_part = tf.bitwise.left_shift(tf.bitwise.bitwise_and(hi * c, 0xFFFF), 16)
    return tf.bitwise.bitwise_and(lo * c + hi_part, _M32)


def _mix32(x: tf.Tensor) -> tf.Tensor:
    """lowbias32 (C. Wellons): a bijective 32-bit integer hash with good avalanche."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = _mul32(x, 0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = _mul32(x, 0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _hash(step: tf.Tensor, n: tf.Tensor, w0: tf.Tensor, w1: tf.Tensor) -> tf.Tensor:
    """32-bit hash of (step, n, w0, w1), all int64 in [0, 2**32); broadcasting."""
    h = _mix32(tf.bitwise.bitwise_xor(step, 0x9E3779B9))
    h = _mix32(tf.bitwise.bitwise_xor(h, tf.bitwise.bitwise_and(n + 0x85EBCA6B, _M32)))
    h = _mix32(tf.bitwise.bitwise_xor(h, w0))
    return _mix32(tf.bitwise.bitwise_xor(h, tf.bitwise.bitwise_xor(w1, 0xC2B2AE35)))


def _seed_words(seed) -> tuple[int, int]:
    s = 0 if seed is None else int(seed) & 0xFFFFFFFFFFFFFFFF
    return s & _M32, s >> 32


def _key_words(batch: tf.Tensor, training, seed, rng) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-row key words [B] int64 in [0, 2**32): fixed from `seed` at inference, freshly random in training."""
    w0, w1 = _seed_words(seed)
    infer = (tf.fill([batch], tf.constant(w0, tf.int64)), tf.fill([batch], tf.constant(w1, tf.int64)))
    if isinstance(training, bool) or training is None:
        if not training:
            return infer

    def fresh():
        shape = tf.stack([batch, 2])
        if rng is not None:
            words = rng.uniform(shape, minval=0, maxval=2**32, dtype=tf.int64)
        else:
            words = tf.random.uniform(shape, minval=0, maxval=2**32, dtype=tf.int64, seed=seed)
        return words[:, 0], words[:, 1]

    train = fresh()
    if isinstance(training, bool):
        return train
    flag = tf.cast(training, tf.bool)
    return tf.where(flag, train[0], infer[0]), tf.where(flag, train[1], infer[1])


def _random_indices(n: tf.Tensor, k: int, training, seed, rng) -> tf.Tensor:
    """k distinct indices in [0, n) per row (Floyd's algorithm), sorted; rows with n < k are garbage (replaced)."""
    batch = tf.shape(n)[0]
    n64 = tf.cast(n, tf.int64)
    n_eff = tf.maximum(n64, k)  # keeps j >= 0; rows with n < k are overridden by the caller
    w0, w1 = _key_words(batch, training, seed, rng)
    steps = tf.range(k, dtype=tf.int64)[None, :]  # [1, k]
    h = _hash(steps, n64[:, None], w0[:, None], w1[:, None])  # [B, k]
    j = n_eff[:, None] - k + steps  # [B, k]: Floyd's j for step s is n-k+s
    t = tf.math.floormod(h, j + 1)  # uniform on [0, j] (bias <= n / 2**32)
    pos = tf.range(k)[None, :]

    def body(s, chosen):
        t_s = tf.gather(t, s, axis=1)
        j_s = tf.gather(j, s, axis=1)
        dup = tf.reduce_any(tf.equal(chosen, t_s[:, None]), axis=1)
        value = tf.where(dup, j_s, t_s)
        return s + 1, tf.where(tf.equal(pos, s), value[:, None], chosen)

    chosen0 = tf.fill(tf.stack([batch, k]), tf.constant(-1, tf.int64))
    _, chosen = tf.while_loop(
        lambda s, c: s < k, body, (tf.constant(0), chosen0), maximum_iterations=k, parallel_iterations=1
    )
    return tf.cast(tf.sort(chosen, axis=1), tf.int32)


def selection_indices(num_frames, k: int, policy: str, *, training=False, seed=None, rng=None):
    """Per-video frame indices for a policy (see the module docstring for the exact semantics).

    Args:
      num_frames: [B] (or [B, 1]) integer tensor, the number of real frames of each video.
      k: Python int >= 1, the number of frames to select.
      policy: one of ``POLICIES``.
      training: Python bool or scalar bool tensor; only ``random`` uses it (fresh draws in training, a
        deterministic draw per (n, seed) otherwise).
      seed: optional Python int for ``random``.
      rng: optional ``tf.random.Generator`` for ``random`` in training (instead of ``tf.random.uniform``).

    Returns:
      ``(indices [B, k] int32, counts [B] int32)``: ``counts = min(n, k)``; ``indices[b, :counts[b]]`` are strictly
      increasing frame indices in ``[0, n)``; positions past the count hold 0 (safe to gather; mask them by count).
    """
    k, policy = _validate(k, policy)
    n = tf.reshape(tf.cast(num_frames, tf.int32), [-1])
    n = tf.maximum(n, 0)
    counts = tf.minimum(n, k)
    i = tf.range(k, dtype=tf.int32)[None, :]  # [1, k]
    nc = n[:, None]  # [B, 1]

    if policy == "uniform":
        idx = tf.cast(tf.math.floordiv(tf.cast(i, tf.int64) * tf.cast(nc, tf.int64), k), tf.int32)
    elif policy == "first":
        idx = i + tf.zeros_like(nc)
    elif policy == "last":
        idx = nc - k + i
    elif policy == "middle":
        idx = tf.math.floordiv(nc - k, 2) + i
    elif policy == "fml":
        s0, s1, s2 = fml_block_sizes(k)
        mid = tf.clip_by_value(tf.math.floordiv(nc - s1, 2), s0, tf.maximum(nc - s2 - s1, s0))
        block_start = tf.where(i < s0, tf.zeros_like(nc), tf.where(i < s0 + s1, mid, nc - s2))
        block_offset = tf.where(i < s0, i, tf.where(i < s0 + s1, i - s0, i - s0 - s1))
        idx = block_start + block_offset
    else:  # random
        idx = _random_indices(n, k, training, seed, rng)

    # Short videos (n < k): the n real frames in order; positions past the count: 0.
    idx = tf.where(nc < k, i + tf.zeros_like(nc), idx)
    idx = tf.where(i < counts[:, None], idx, tf.zeros_like(idx))
    return idx, counts


def frames_to_decode(k: int, policy: str, seed=None):
    """A reader's `select` (yt8m.readers.read_frame_dataset): the indices this selection takes at inference, as a
    function of num_frames [1]; a FrameSelector given the k frames read this way passes them through unchanged."""
    return lambda num_frames: selection_indices(num_frames, k, policy, seed=seed)


def select_frames(frames, num_frames, k: int, policy: str, *, training=False, seed=None, rng=None):
    """Select k frames per video: ``frames [B, T, D]`` -> ``(selected [B, k, D], counts [B] int32)``.

    ``num_frames`` [B] (or [B, 1]) counts the real frames of each video (clipped to ``[0, T]``); the indices are those
    of ``selection_indices`` (gathered with ``batch_dims=1``); rows past ``counts = min(num_frames, k)`` are exactly
    0.0. T may be static or dynamic (a dynamic T must be >= 1 at run time; a static T == 0 gives all zeros).
    """
    k, policy = _validate(k, policy)
    frames = tf.convert_to_tensor(frames)
    if frames.shape.rank is not None and frames.shape.rank != 3:
        raise ConfigError(f"frames must be [batch, time, features], got shape {frames.shape}")
    n = tf.reshape(tf.cast(num_frames, tf.int32), [-1])
    static_t = frames.shape[1]
    t = static_t if static_t is not None else tf.shape(frames)[1]
    n = tf.clip_by_value(n, 0, t)
    idx, counts = selection_indices(n, k, policy, training=training, seed=seed, rng=rng)
    if static_t == 0:
        shape = tf.stack([tf.shape(frames)[0], k, tf.shape(frames)[2]])
        return tf.zeros(shape, frames.dtype), counts
    gathered = tf.gather(frames, idx, batch_dims=1)  # [B, k, D]
    valid = tf.range(k)[None, :, None] < counts[:, None, None]
    return tf.where(valid, gathered, tf.zeros([], frames.dtype)), counts


class FrameSelector(keras.layers.Layer):
    """Keras layer: ``call(frames, num_frames, training=None) -> (selected [B, k, D], counts [B] int32)``.

    A thin wrapper of ``select_frames`` (no weights). ``training=None`` takes Keras' training flag from the enclosing
    call (``model.fit`` -> True, ``predict``/``evaluate`` -> False); it only matters for ``policy="random"``.
    """

    def __init__(self, k: int, policy: str = "uniform", seed: int | None = None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.k, self.policy = _validate(k, policy)
        self.seed = None if seed is None else int(seed)

    def call(self, frames, num_frames, training=None):
        if training is None:
            training = False
        return select_frames(frames, num_frames, self.k, self.policy, training=training, seed=self.seed)

    def compute_output_shape(self, input_shape):
        frames_shape = tf.TensorShape(input_shape[0] if isinstance(input_shape, (list, tuple)) else input_shape)
        return tf.TensorShape([frames_shape[0], self.k, frames_shape[-1]]), tf.TensorShape([frames_shape[0]])

    def get_config(self):
        config = super().get_config()
        config.update(k=self.k, policy=self.policy, seed=self.seed)
        return config
