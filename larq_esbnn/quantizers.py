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


@tf.custom_gradient
def approx_sign_train(x):
    r"""``approx_sign`` for training graphs, in fewer element-wise passes.

    Forward \(\mathrm{sign}(x)\) with \(\mathrm{sign}(0) = +1\), written as one
    compare and one select (larq's ``sign(sign(x) + 0.1)`` takes three passes);
    backward \(2\,\mathrm{relu}(1 - |x|)\, dy\), which is larq's
    \(\mathbf{1}_{|x| \le 1} (1 - |x|) \cdot 2 \cdot dy\) value for value, in
    four passes instead of seven. Both directions equal larq's bit for bit. Used
    only on the training path (``training=True``): the inference graph keeps
    larq's quantizer, the pattern LCE recognises as a binary conv input.
    """
    out = tf.where(x >= 0, tf.constant(1, x.dtype), tf.constant(-1, x.dtype))

    def grad(dy):
        with tf.name_scope("approx_sign_grad"):
            return tf.nn.relu(1 - tf.abs(x)) * 2 * dy

    return out, grad


@tf.custom_gradient
def centred_binary_weight(w):
    r"""BinaryViT's linear weights: centre each output row, then sign, times mean|W|.

    \\[
    \bar W_{\dots,o} = W_{\dots,o} - \tfrac{1}{n}\sum_{\dots} W_{\dots,o}, \qquad
    q(W)_{\dots,o} = \Big(\tfrac{1}{n}\sum_{\dots} |W_{\dots,o}|\Big)\,
    \mathrm{sign}(\bar W_{\dots,o})
    \\]

    (the scale is taken from the *uncentred* row and treated as a constant, as in
    the released code). Backward: the straight-through gradient of
    ``clip(W_bar, -1, 1)``, including the centring, i.e.
    \\(\partial W = m g - \tfrac{1}{n}\sum_{\dots} m g\\) with
    \\(m = \mathbf{1}_{|\bar W| \le 1}\\). The forward value is exactly
    ``+-alpha`` per output channel, so LCE folds it into a binary conv.
    """
    axes = list(range(w.shape.rank - 1))
    alpha = _output_channel_mean_abs(w)
    centred = w - tf.reduce_mean(w, axis=axes, keepdims=True)
    out = alpha * lq.math.sign(centred)

    def grad(dy):
        masked = tf.where(tf.abs(centred) <= 1.0, dy, tf.zeros_like(dy))
        return masked - tf.reduce_mean(masked, axis=axes, keepdims=True)

    return out, grad


@tf.keras.utils.register_keras_serializable(package="larq_esbnn")
class CentredBinaryWeight(lq.quantizers.Quantizer):
    r"""Serializable kernel quantizer: ``mean|W| * sign(W - row mean)`` per output channel.

    The binary linear of BinaryViT (Le & Li 2023); see :func:`centred_binary_weight`.
    ``precision = 1``: binary for the reports and the LCE converter.
    """

    precision = 1

    def call(self, inputs):
        return centred_binary_weight(inputs)


@tf.custom_gradient
def binarize_probabilities(p, alpha):
    r"""BiT-style binarisation of attention probabilities to \\(\{0, \alpha\}\\).

    Forward \\(\hat P = \alpha\,\mathrm{clip}(\mathrm{round}(P / \alpha), 0, 1)\\)
    (``round`` half to even, as ``torch.round``). Backward with \\(q = P/\alpha\\):
    \\(\partial P = g\,\mathbf{1}_{0 \le q \le 1}\\) and
    \\(\partial \alpha = \sum g\,(\mathbf{1}_{0 \le q \le 1}(\mathrm{round}(q) - q)
    + \mathbf{1}_{q > 1})\\), the learnable-scale gradient of the released code.
    """
    q = p / alpha
    out = tf.clip_by_value(tf.round(q), 0.0, 1.0) * alpha

    def grad(dy):
        middle = tf.cast((q >= 0) & (q <= 1), dy.dtype)
        big = tf.cast(q > 1, dy.dtype)
        d_alpha = tf.reduce_sum((middle * (tf.round(q) - q) + big) * dy)
        return dy * middle, tf.reshape(d_alpha, tf.shape(alpha))

    return out, grad


# ----------------------------------------------------------------------------- BNext
#
# BNext (and ES-BNext) binarise weights without a scale factor and anneal a
# temperature T: the effective kernel is clip(W / T, -1, 1) while T >= 1e-7 and
# sign(W) afterwards (the released HardBinaryConv). Activations use HardSign,
# which is larq's SteSign with clip_value 1.5 (see ``HARDSIGN``).

TEMPERATURE_BINARY_THRESHOLD = 1e-7
HARDSIGN_CLIP = 1.5


def hardsign():
    r"""BNext's HardSign: sign forward, identity gradient on \(|x| \le 1.5\).

    The released module also keeps an activation temperature T, but its forward
    is \(\mathrm{sign}(\mathrm{clip}(x/T, -1, 1)) = \mathrm{sign}(x)\) for every
    T > 0, so it is not needed here. ``sign(0)`` is +1 (PyTorch: 0).
    """
    return lq.quantizers.SteSign(clip_value=HARDSIGN_CLIP)


@tf.custom_gradient
def temperature_binary_weight(w, temperature):
    r"""BNext weight binariser with temperature T (a scalar).

    \\[
    q(W) = \begin{cases}
      \mathrm{sign}(W) & T < 10^{-7} \\
      \mathrm{clip}(W / \max(T, 10^{-8}), -1, 1) & \text{otherwise}
    \end{cases},
    \qquad \frac{\partial q}{\partial W} = 1
    \\]

    No scale factor (the BN that follows absorbs it) and no gradient mask: the
    gradient goes straight through to the latent weight, as in the release.
    ``sign(0)`` is +1, so an annealed kernel is exactly +-1 (what LCE needs;
    the release gives 0 for an exactly-zero latent weight). T gets no gradient.
    """
    t = tf.cast(temperature, w.dtype)
    soft = tf.clip_by_value(w / tf.maximum(t, tf.constant(1e-8, w.dtype)), -1.0, 1.0)
    out = tf.where(t < TEMPERATURE_BINARY_THRESHOLD, lq.math.sign(w), soft)

    def grad(dy):
        return dy, tf.zeros_like(temperature)

    return out, grad


@tf.keras.utils.register_keras_serializable(package="larq_esbnn")
class TemperatureBinaryWeight(lq.quantizers.Quantizer):
    r"""Kernel quantizer of BNext: :func:`temperature_binary_weight` with a temperature T.

    ``temperature`` is a float, or (inside :class:`larq_esbnn.layers.TemperatureBinaryConv2D`)
    a callable returning the layer's non-trainable temperature variable, which the
    training callback ``WeightTemperatureSchedule`` lowers by x0.9 per epoch.
    ``precision = 1``: the kernel is binary once T < 1e-7 (the state of every
    trained BNext checkpoint); counts and exports treat it as binary, and
    ``check_export`` reports a conv whose T is still high as a float fallback.
    """

    precision = 1

    def __init__(self, temperature=0.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature

    def call(self, inputs):
        t = self.temperature() if callable(self.temperature) else self.temperature
        return temperature_binary_weight(inputs, tf.convert_to_tensor(t, inputs.dtype))

    def get_config(self):
        t = self.temperature() if callable(self.temperature) else self.temperature
        return {**super().get_config(), "temperature": float(tf.keras.backend.get_value(t))}
