"""The trainer's optimizer: Keras' Adam, updated in place by TensorFlow's fused kernel.

Keras' Adam updates each variable with a chain of element-wise ops, and its `clipnorm` squares the gradient into a
copy to take its norm: about two transient copies of the variable being updated. One step of a 1.2 GB Dense layer
(NetVLAD-WILLOW's hidden layer) peaked 2.3 GB above its floor (the weights, Adam's two slots and the gradients).
Here the update is `ResourceApplyAdam` on the same slot variables (the same arithmetic, written into m, v and the
variable), and the norm is `l2_loss` (a reduction, no copy), so a step needs the floor and little more
(docs/BENCHMARKS.md, "Paper scale"). The variables, and so the checkpoints, are Keras' Adam's.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` (same arguments, same state, same updates) without its transient copies."""

    def _clip_gradients(self, grads):
        """`clipnorm`: each gradient scaled to at most that norm, as Keras does (after the replicas' gradients are
        summed), with the norm taken without squaring the gradient into a copy."""
        if not (self.clipnorm and self.clipnorm > 0):
            return super()._clip_gradients(grads)
        clipped = []
        for g in grads:
            if g is None:
                clipped.append(None)
                continue
            if isinstance(g, tf.IndexedSlices):
                clipped.append(tf.clip_by_norm(g, self.clipnorm))
                continue
            norm = tf.sqrt(2.0 * tf.nn.l2_loss(g))
            clipped.append(g * tf.minimum(tf.constant(1.0, g.dtype), tf.cast(self.clipnorm, g.dtype) / norm))
        return clipped

    def update_step(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._index_dict[self._var_key(variable)]
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(self.learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=gradient,
            use_locking=False,
        )
