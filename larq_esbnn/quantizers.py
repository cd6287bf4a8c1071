"""Quantizers of the ReActNet family.

Activations use larq's ``approx_sign`` (sign forward, Bi-Real polynomial gradient
``2 - 2|x|`` on ``|x| <= 1``); LCE recognises it as the input of a binary conv.
Weights use :class:`ScaledBinaryWeight` below.
"""

import larq as lq
import tensorflow as tf

ACTIVATION_QUANTIZER = "approx_sign"


def _output_channel_mean_abs(w):
    axes = list(range(w.shape.rank - 1))
    return tf.reduce_mean(tf.abs(w), axis=axes, keepdims=True)


@tf.custom_gradient
def scaled_binary_weight(w):
    r"""Binarise a kernel with one scale per output channel (last axis).

    \\[
    q(W) = \alpha \, \mathrm{sign}(W), \quad
    \alpha_o = \frac{1}{n} \sum_{i} |W_{i,o}| \ \text{(a constant)}, \quad
    \frac{\partial q}{\partial W} = \mathbf{1}_{|W| \le 1}
    \\]

    The backward pass is the straight-through gradient of ``clip(W, -1, 1)``, as
    in the released ReActNet code; no gradient flows through ``alpha`` (unlike
    larq's ``magnitude_aware_sign``, which scales the gradient by alpha).
    ``sign(0)`` is +1, so the kernel is exactly ``+-alpha`` as LCE requires.
    """
    alpha = _output_channel_mean_abs(w)
    out = alpha * lq.math.sign(w)

    def grad(dy):
        return tf.where(tf.abs(w) <= 1.0, dy, tf.zeros_like(dy))

    return out, grad


@tf.keras.utils.register_keras_serializable(package="larq_esbnn")
class ScaledBinaryWeight(lq.quantizers.Quantizer):
    r"""Serializable kernel quantizer: ``mean|W| per output channel * sign(W)``.

    \\[
    q(W)_{\dots,o} = \Big(\tfrac{1}{n}\sum_{\dots} |W_{\dots,o}|\Big)\,
    \mathrm{sign}(W_{\dots,o}), \qquad
    \tfrac{\partial q}{\partial W} = \mathbf{1}_{|W| \le 1}
    \\]

    ``precision = 1`` marks it as binary for ``larq.models.summary`` and for the
    LCE converter, which folds the constant scale into the binary conv.
    """

    precision = 1

    def call(self, inputs):
        return scaled_binary_weight(inputs)


def get_activation_quantizer():
    return lq.quantizers.get(ACTIVATION_QUANTIZER)
