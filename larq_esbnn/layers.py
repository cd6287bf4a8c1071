"""Keras layers of the ReActNet / BCDNet / ES-BNN family.

Every layer is registered as a Keras serialisable object (package
``larq_esbnn``) and round-trips through ``get_config``. Shapes are NHWC.
"""

import logging
from contextlib import contextmanager

import larq as lq
import tensorflow as tf

from larq_esbnn.quantizers import (
    ACTIVATION_QUANTIZER,
    HARDSIGN_CLIP,
    CentredBinaryWeight,
    ScaledBinaryWeight,
    TemperatureBinaryWeight,
    approx_sign_train,
    binarize_probabilities,
    hardsign,
)

_register = tf.keras.utils.register_keras_serializable(package="larq_esbnn")

# The training path. With ``training=True`` some layers run hand-written
# custom-gradient versions of themselves that take fewer element-wise passes over
# the stream (the cost that dominates a CPU training step, see
# benchmarks/README.md). Their forward values equal the plain layers' bit for bit
# and their gradients agree to float rounding (tests/test_train.py). Inference
# (``training=False``, export, reports) always runs the plain graph. One name
# throughout: ``fused_training`` (this switch, the recipe key, the argument of
# ``train.trainer.BNNTrainer``); ``larq-esbnn train --plain-training`` turns it off.
_FUSED_TRAINING = {"enabled": True}


@contextmanager
def no_fused_training():
    """Trace training graphs with the plain Keras ops (for debugging and tests)."""
    before = _FUSED_TRAINING["enabled"]
    _FUSED_TRAINING["enabled"] = False
    try:
        yield
    finally:
        _FUSED_TRAINING["enabled"] = before


def fused_training(training):
    """True when a layer called with ``training`` should take the fused path."""
    return bool(training) and _FUSED_TRAINING["enabled"]


@_register
class LearnableBias(tf.keras.layers.Layer):
    r"""ReActNet's "move": \\(y = x + b\\), one trainable \\(b_c\\) per channel, init 0."""

    def build(self, input_shape):
        self.bias = self.add_weight(
            name="bias", shape=(input_shape[-1],), initializer="zeros", trainable=True
        )
        super().build(input_shape)

    def call(self, inputs, training=None):
        if fused_training(training):
            return _bias_train(inputs, self.bias)
        return inputs + self.bias


@_register
class RSign(LearnableBias):
    r"""ReAct-Sign: \\(y = \mathrm{sign}(x + b)\\) with a learnable threshold per channel.

    Backward (Bi-Real polynomial): \\(\partial y / \partial x = 2 - 2|x + b|\\) on
    \\(|x + b| \le 1\\), else 0. Inside the zoo the sign is applied as the input
    quantizer of :class:`BinaryConv2D` after a :class:`LearnableBias`, which is
    the same function and the form LCE turns into a binary conv. This layer is
    kept for blocks written outside the zoo that binarise a tensor on its own
    (``report`` counts its output as binary).
    """

    def call(self, inputs, training=None):
        return lq.quantizers.get(ACTIVATION_QUANTIZER)(inputs + self.bias)


@_register
class RPReLU(tf.keras.layers.Layer):
    r"""ReAct-PReLU: \\(y = \mathrm{PReLU}_\beta(x - \gamma) + \zeta\\).

    \\(\gamma, \zeta\\) are learnable per-channel shifts (init 0) and
    \\(\beta\\) the per-channel negative slope (init 0.25), shared over H and W:
    \\(\mathrm{PReLU}_\beta(t) = \max(t, 0) + \beta \min(t, 0)\\).
    """

    def build(self, input_shape):
        c = input_shape[-1]
        self.bias_in = self.add_weight(name="bias_in", shape=(c,), initializer="zeros")
        self.slope = self.add_weight(
            name="slope", shape=(c,), initializer=tf.keras.initializers.Constant(0.25)
        )
        self.bias_out = self.add_weight(name="bias_out", shape=(c,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, training=None):
        if fused_training(training):
            return _rprelu_train(inputs, self.bias_in, self.slope, self.bias_out)
        t = inputs + self.bias_in
        if not training:
            # inference: one select instead of two ReLUs, a negation and a
            # subtraction; the same values bit for bit (see _rprelu_train)
            return tf.where(t > 0, t, self.slope * t) + self.bias_out
        return tf.nn.relu(t) - self.slope * tf.nn.relu(-t) + self.bias_out


def channel_sum(g):
    """Sum over every axis but the last, as one matrix product with a ones vector:
    on CPU about twice as fast as ``reduce_sum(g, [0, 1, 2])`` for the small
    channel counts of CIFAR models (the order of summation, and so the rounding,
    differs)."""
    c = g.shape[-1]
    flat = tf.reshape(g, [-1, c])
    return tf.linalg.matvec(flat, tf.ones_like(flat[:, 0]), transpose_a=True)


@tf.custom_gradient
def _bias_train(x, bias):
    """``x + bias`` whose bias gradient uses :func:`channel_sum` (training path)."""

    def grad(g):
        with tf.name_scope("learnable_bias_grad"):
            return g, channel_sum(g)

    return x + bias, grad


@tf.custom_gradient
def _rprelu_train(x, bias_in, slope, bias_out):
    r"""RPReLU with a hand-written gradient (training path).

    Forward \(y = [t > 0]\, t + [t \le 0]\, \beta t + \zeta\) with
    \(t = x + \gamma\), equal to ``relu(t) - beta relu(-t) + zeta`` bit for bit
    (both give t, or beta t, before adding zeta). Backward:
    \(\partial x = g\,[t > 0] + \beta g\,[t \le 0]\),
    \(\partial \gamma = \sum \partial x\),
    \(\partial \beta = \sum g \min(t, 0)\), \(\partial \zeta = \sum g\),
    sums over batch, height and width.
    """
    t = x + bias_in
    positive = t > 0
    y = tf.where(positive, t, slope * t) + bias_out

    def grad(g):
        with tf.name_scope("rprelu_grad"):
            dx = tf.where(positive, g, slope * g)
            return dx, channel_sum(dx), channel_sum(g * tf.minimum(t, 0)), channel_sum(g)

    return y, grad


@contextmanager
def _quiet_larq():
    # larq warns about binary kernels without a kernel constraint; the ReActNet
    # recipe deliberately uses none (the STE clip lives in the quantizer).
    logger = logging.getLogger("larq")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@_register
class BinaryConv2D(lq.layers.QuantConv2D):
    r"""Binary convolution: sign input, scaled binary kernel, no bias.

    \\[ y = \mathrm{sign}(x) \circledast \big(\alpha \odot \mathrm{sign}(W)\big) \\]

    Arguments beyond ``QuantConv2D``:
        pad_value: value of the padded border of the *binarised* input for 3x3
            'same' convs: 0 as in the released PyTorch checkpoints, 1 for the
            layout LCE maps natively (``pad_values`` in larq).
        symmetric: at stride 2 on an even size, pad one pixel on *both* sides as
            PyTorch does (TF 'same' pads 0 before, 1 after). Implemented exactly
            and LCE-convertibly by flipping H/W of the real-valued input, running
            a TF-'same' conv with a spatially flipped kernel and flipping back;
            sign and per-channel biases commute with the flip.
        binary_weights: False gives step 1 of the two-step recipe (binary
            activations, real weights); the variables are the same.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        pad_value=0.0,
        symmetric=True,
        binary_weights=True,
        input_quantizer=ACTIVATION_QUANTIZER,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        for key in ("padding", "use_bias", "kernel_quantizer", "pad_values"):
            kwargs.pop(key, None)
        if pad_value not in (0, 0.0, 1, 1.0):
            raise ValueError(f"pad_value must be 0 or 1, got {pad_value!r}")
        self.symmetric = bool(symmetric)
        self.binary_weights = bool(binary_weights)
        with _quiet_larq():
            super().__init__(
                filters,
                kernel_size,
                strides=strides,
                padding="same",
                pad_values=float(pad_value),
                use_bias=False,
                input_quantizer=input_quantizer,
                kernel_quantizer=self._make_kernel_quantizer() if self.binary_weights else None,
                kernel_initializer=kernel_initializer,
                **kwargs,
            )
        self._flip_axes = []

    def _make_kernel_quantizer(self):
        return ScaledBinaryWeight()

    def build(self, input_shape):
        self._flip_axes = []
        if self.symmetric:
            for axis, (size, stride, k) in enumerate(
                zip(input_shape[1:3], self.strides, self.kernel_size)
            ):
                if stride == 1 or k == 1:
                    continue
                if size is None:
                    raise ValueError(
                        f"{self.name}: symmetric stride-{stride} padding needs a static "
                        "spatial size; pass input_shape to the model or symmetric=False"
                    )
                if size % 2 == 0 and stride == 2 and k == 3:
                    self._flip_axes.append(axis)
                elif stride != 2 or k != 3:
                    raise ValueError(
                        f"{self.name}: symmetric padding supports 3x3 kernels at stride "
                        f"1 or 2, got kernel {self.kernel_size} stride {self.strides}"
                    )
        super().build(input_shape)

    def call(self, inputs, training=None):
        if self._flip_axes:
            axes = [a + 1 for a in self._flip_axes]
            inputs = tf.reverse(inputs, axes)
        if fused_training(training) and isinstance(self.input_quantizer, lq.quantizers.ApproxSign):
            # training path: the same sign in fewer passes; skip larq's BaseLayer.call,
            # which would apply the input quantizer a second time
            with lq.context.quantized_scope(True):
                outputs = super(lq.layers_base.BaseLayer, self).call(approx_sign_train(inputs))
        else:
            outputs = super().call(inputs)
        return tf.reverse(outputs, axes) if self._flip_axes else outputs

    def convolution_op(self, inputs, kernel):
        if self._flip_axes:
            kernel = tf.reverse(kernel, self._flip_axes)
        return super().convolution_op(inputs, kernel)

    def get_config(self):
        config = super().get_config()
        for key in ("padding", "use_bias", "kernel_quantizer", "pad_values"):
            config.pop(key, None)
        config.update(
            pad_value=float(self.pad_values),
            symmetric=self.symmetric,
            binary_weights=self.binary_weights,
        )
        return config


@_register
class ChannelTile(tf.keras.layers.Layer):
    r"""Whole-block replication along channels (``tf.tile``, not element repeat).

    \\(y_{\dots, c} = x_{\dots, c \bmod C}\\) for \\(c < C \cdot \text{reps}\\).
    ES uses it to widen a shrunk binary conv output back to the stream width.
    """

    def __init__(self, reps, **kwargs):
        super().__init__(**kwargs)
        if int(reps) < 1:
            raise ValueError(f"ChannelTile reps must be >= 1, got {reps!r}")
        self.reps = int(reps)

    def call(self, inputs):
        if self.reps == 1:
            return inputs
        return tf.tile(inputs, [1, 1, 1, self.reps])

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[-1] = shape[-1] * self.reps
        return tf.TensorShape(shape)

    def get_config(self):
        return {**super().get_config(), "reps": self.reps}


@_register
class ChannelSplit(tf.keras.layers.Layer):
    """Split channels into ``groups`` equal consecutive parts (binary group conv G).

    A grouped binary conv is built as split -> one binary conv per group ->
    concat: each part is an ordinary binary conv for LCE, and TF's grouped conv
    is ~17x slower to train on CPU.
    """

    def __init__(self, groups, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)

    def build(self, input_shape):
        c = input_shape[-1]
        if c % self.groups:
            raise ValueError(f"{self.name}: {c} channels do not split into {self.groups} groups")
        super().build(input_shape)

    def call(self, inputs):
        return tf.split(inputs, self.groups, axis=-1)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[-1] = shape[-1] // self.groups
        return [tf.TensorShape(shape)] * self.groups

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


def _shift(x, k, axis, mode):
    if mode == "circular":
        return tf.roll(x, shift=k, axis=axis)
    size = x.shape[axis]
    pad = [[0, 0]] * 4
    if k >= 0:
        pad[axis] = [k, 0]
        begin = 0
    else:
        pad[axis] = [0, -k]
        begin = -k
    padded = tf.pad(x, pad)
    return tf.gather(padded, tf.range(begin, begin + size), axis=axis)


@_register
class LongShortShift(tf.keras.layers.Layer):
    r"""BCDNet's token shift: four channel quarters moved by ``+-k`` along H and W.

    With quarters \\(x^{(0..3)}\\): \\(y^{(0)}_{h,w} = x^{(0)}_{h-k,w}\\),
    \\(y^{(1)}_{h,w} = x^{(1)}_{h+k,w}\\), \\(y^{(2)}_{h,w} = x^{(2)}_{h,w-k}\\),
    \\(y^{(3)}_{h,w} = x^{(3)}_{h,w+k}\\). ``padding="circular"`` wraps around
    (released code); ``"zero"`` fills with zeros (paper text). A circular shift
    commutes with per-channel bias and sign, so the zoo shifts the real-valued
    tensor before the sign, which keeps the following conv binary in LCE.
    """

    def __init__(self, shift, padding="circular", **kwargs):
        super().__init__(**kwargs)
        if padding not in ("circular", "zero"):
            raise ValueError(f"padding must be 'circular' or 'zero', got {padding!r}")
        self.shift = int(shift)
        self.padding = padding

    def build(self, input_shape):
        if input_shape[-1] % 4:
            raise ValueError(
                f"{self.name}: channels ({input_shape[-1]}) must be divisible by 4 "
                "(one quarter per shift direction)"
            )
        super().build(input_shape)

    def call(self, inputs):
        k = self.shift
        q = tf.split(inputs, 4, axis=-1)
        return tf.concat(
            [
                _shift(q[0], k, 1, self.padding),
                _shift(q[1], -k, 1, self.padding),
                _shift(q[2], k, 2, self.padding),
                _shift(q[3], -k, 2, self.padding),
            ],
            axis=-1,
        )

    def get_config(self):
        return {**super().get_config(), "shift": self.shift, "padding": self.padding}


@_register
class ContextualThresholds(tf.keras.layers.Layer):
    r"""BCDNet-B's input-dependent thresholds, inferred from the description of BCDNet-B in
    Xing et al., "Towards Accurate Binary Neural Networks via Modeling Contextual
    Dependencies" (ECCV 2022).

    For a binary conv with input \\(A \in \mathbb{R}^{H\times W\times C_{in}}\\):
    \\[
    e = W_1\,\mathrm{GAP}(A) + b_1 \in \mathbb{R}^{C_{in}/r},\quad
    \alpha = W_2 e + b_2 \in \mathbb{R}^{C_{in}},\quad
    \beta = W_3 e + b_3 \in \mathbb{R}^{C_{out}}
    \\]
    and the conv computes \\(\mathrm{BN}(\mathrm{sign}(A - \alpha) \circledast W + \beta)\\).
    ``out_channels`` may be a list when one sign feeds several convs (one beta each).
    \\(W_2, W_3\\) and all biases start at zero, so a fresh layer returns
    \\(\alpha = \beta = 0\\) and the wrapped block computes exactly its static
    (BCDNet-A) output. Returns ``[alpha, beta_1, ...]`` shaped (N, 1, 1, C).
    """

    def __init__(self, out_channels, ratio=4, **kwargs):
        super().__init__(**kwargs)
        if int(ratio) < 1:
            raise ValueError(f"ratio must be >= 1, got {ratio!r}")
        # one beta per binary conv fed by this sign (ReActNet-A's downsampling part 2 has two)
        self.out_channels = [int(c) for c in (out_channels if isinstance(out_channels, (list, tuple)) else [out_channels])]
        self.ratio = int(ratio)

    def build(self, input_shape):
        c = input_shape[-1]
        if c % self.ratio:
            raise ValueError(f"{self.name}: {c} channels not divisible by ratio {self.ratio}")
        e = c // self.ratio
        self.w1 = self.add_weight(name="w1", shape=(c, e), initializer="glorot_uniform")
        self.b1 = self.add_weight(name="b1", shape=(e,), initializer="zeros")
        self.w2 = self.add_weight(name="w2", shape=(e, c), initializer="zeros")
        self.b2 = self.add_weight(name="b2", shape=(c,), initializer="zeros")
        total = sum(self.out_channels)
        self.w3 = self.add_weight(name="w3", shape=(e, total), initializer="zeros")
        self.b3 = self.add_weight(name="b3", shape=(total,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        e = tf.reduce_mean(inputs, axis=[1, 2]) @ self.w1 + self.b1
        alpha = e @ self.w2 + self.b2
        beta = e @ self.w3 + self.b3
        betas = tf.split(beta, self.out_channels, axis=-1) if len(self.out_channels) > 1 else [beta]
        return [alpha[:, None, None, :]] + [b[:, None, None, :] for b in betas]

    def compute_output_shape(self, input_shape):
        n = input_shape[0]
        return [tf.TensorShape([n, 1, 1, input_shape[-1]])] + [
            tf.TensorShape([n, 1, 1, c]) for c in self.out_channels
        ]

    def get_config(self):
        return {**super().get_config(), "out_channels": self.out_channels, "ratio": self.ratio}


@_register
class SymmetricMaxPool2D(tf.keras.layers.Layer):
    """3x3 / stride-2 max pool padded one pixel on both sides (PyTorch ``padding=1``).

    TF 'same' pads (0, 1) on even sizes; flipping H and W around it gives the
    symmetric result exactly, because the max is symmetric in its window.
    """

    def call(self, inputs):
        flipped = tf.reverse(inputs, [1, 2])
        pooled = tf.nn.max_pool2d(flipped, 3, 2, "SAME")
        return tf.reverse(pooled, [1, 2])


def batch_norm(name=None, momentum=0.9):
    """BatchNorm with the PyTorch defaults (epsilon 1e-5, momentum 0.9 in Keras terms)."""
    return tf.keras.layers.BatchNormalization(momentum=momentum, epsilon=1e-5, name=name)


# ----------------------------------------------------------------------------- transformers
#
# Token layers of BinaryViT and the binary MLP-Mixer. Tokens are NHWC maps
# (batch, height, width, channels), so a token-wise linear is a 1x1 conv and LCE
# sees a binary conv.


@_register
class BinaryLinear(BinaryConv2D):
    r"""Token-wise binary linear layer, written as a 1x1 :class:`BinaryConv2D`.

    \\[ y_t = \mathrm{sign}(x_t)\, q(W) \\]

    With ``centred=True`` (BinaryViT) the kernel is
    :class:`~larq_esbnn.quantizers.CentredBinaryWeight` (sign of the row-centred
    weight times mean|W|), else ReActNet's scaled sign. Other arguments as
    :class:`BinaryConv2D` (``binary_weights=False`` keeps real weights for step 1
    of the two-step recipe). No bias.
    """

    def __init__(self, filters, kernel_size=1, centred=True, **kwargs):
        kwargs.setdefault("symmetric", False)
        super().__init__(filters, kernel_size, **kwargs)
        self.centred = bool(centred)
        if self.centred and self.binary_weights:
            self.kernel_quantizer = CentredBinaryWeight()

    def get_config(self):
        return {**super().get_config(), "centred": self.centred}


@_register
class LayerScale(tf.keras.layers.Layer):
    r"""Per-channel affine map \\(y = \gamma \odot x + \beta\\) (BinaryViT's LayerScale).

    \\(\gamma\\) starts at ``init`` (0.1 on the attention / FFN outputs, 0 on the
    pooling branches), \\(\beta\\) at 0. The weights are called ``gamma`` and
    ``beta`` like BN's, so the trainer's weight-decay filter leaves them alone.
    """

    def __init__(self, init=0.1, **kwargs):
        super().__init__(**kwargs)
        self.init = float(init)

    def build(self, input_shape):
        c = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer=tf.keras.initializers.Constant(self.init))
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return inputs * self.gamma + self.beta

    def get_config(self):
        return {**super().get_config(), "init": self.init}


@_register
class PositionEmbedding(tf.keras.layers.Layer):
    r"""Learned position embedding added to a token map: \\(y_{h,w,c} = x_{h,w,c} + E_{h,w,c}\\).

    One (H, W, C) table (H W C parameters; the released code's ``(1, N, C)`` in
    row-major token order), initialised from a truncated normal with std 0.02.
    """

    def build(self, input_shape):
        h, w, c = input_shape[1:]
        if h is None or w is None:
            raise ValueError(f"{self.name}: a position embedding needs a static token grid, got {tuple(input_shape)}")
        self.embedding = self.add_weight(
            name="embedding", shape=(h, w, c), initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02)
        )
        super().build(input_shape)

    def call(self, inputs):
        return inputs + self.embedding


@_register
class ChannelAvgPool(tf.keras.layers.Layer):
    r"""Average of adjacent channel groups: \\(y_c = \frac{1}{r}\sum_{j<r} x_{rc + j}\\).

    BinaryViT's shortcut around a shrinking linear (rC -> C), PyTorch's
    ``AvgPool1d(r)`` over the channel axis.
    """

    def __init__(self, pool, **kwargs):
        super().__init__(**kwargs)
        if int(pool) < 1:
            raise ValueError(f"ChannelAvgPool pool must be >= 1, got {pool!r}")
        self.pool = int(pool)

    def build(self, input_shape):
        if input_shape[-1] % self.pool:
            raise ValueError(f"{self.name}: {input_shape[-1]} channels do not split into groups of {self.pool}")
        super().build(input_shape)

    def call(self, inputs):
        if self.pool == 1:
            return inputs
        c = inputs.shape[-1]
        shape = tf.concat([tf.shape(inputs)[:-1], [c // self.pool, self.pool]], 0)
        return tf.reduce_mean(tf.reshape(inputs, shape), axis=-1)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[-1] = shape[-1] // self.pool
        return tf.TensorShape(shape)

    def get_config(self):
        return {**super().get_config(), "pool": self.pool}


@_register
class TokenAttention(tf.keras.layers.Layer):
    r"""Multi-head attention core on token maps: ``[Q, K, V] -> softmax(Q K^T / sqrt(d)) V``.

    Inputs are NHWC maps: Q of shape (H, W, C), K and V of shape (h, w, C)
    (spatially reduced in BinaryViT's first stages). With ``H W = N``,
    ``h w = M`` and ``d = C / heads``, per head:

    \\[
    S = \tfrac{1}{\sqrt d}\, Q K^\top \in \mathbb{R}^{N \times M},\quad
    P = \mathrm{softmax}(S),\quad
    \hat P = \alpha\, \mathrm{clip}(\mathrm{round}(P / \alpha), 0, 1),\quad
    Y = \hat P V
    \\]

    The binarisation of the probabilities to \\(\{0, \alpha\}\\) (BiT style,
    \\(\alpha\\) one learnable scalar initialised to ``prob_init``) is on when
    ``binary_probs``. Q, K, V are used as given: BinaryViT binarises them with a
    sign layer in front, and then Q K^T and \\(\hat P V\\) are binary matmuls
    (the operation counter checks the inputs). The layer has no projections.
    """

    def __init__(self, heads, binary_probs=True, prob_init=0.005, **kwargs):
        super().__init__(**kwargs)
        if int(heads) < 1:
            raise ValueError(f"heads must be >= 1, got {heads!r}")
        self.heads = int(heads)
        self.binary_probs = bool(binary_probs)
        self.prob_init = float(prob_init)

    def build(self, input_shape):
        q, k, v = [tf.TensorShape(s) for s in input_shape]
        c = q[-1]
        if c % self.heads:
            raise ValueError(f"{self.name}: {c} channels do not split into {self.heads} heads")
        if k[-1] != c or v[-1] != c or k[1:3] != v[1:3]:
            raise ValueError(f"{self.name}: K and V must share one shape with Q's channels, got {q}, {k}, {v}")
        if self.binary_probs:
            # called gamma so that the trainer's weight-decay filter skips it
            self.gamma = self.add_weight(
                name="prob_gamma", shape=(), initializer=tf.keras.initializers.Constant(self.prob_init)
            )
        super().build(input_shape)

    def _heads(self, x):
        c = x.shape[-1]
        n = x.shape[1] * x.shape[2]
        x = tf.reshape(x, [-1, n, self.heads, c // self.heads])
        return tf.transpose(x, [0, 2, 1, 3])  # (B, heads, tokens, d)

    def call(self, inputs):
        q, k, v = inputs
        h, w, c = q.shape[1:]
        d = c // self.heads
        scores = tf.matmul(self._heads(q), self._heads(k), transpose_b=True) * (1.0 / d**0.5)
        probs = tf.nn.softmax(scores, axis=-1)
        if self.binary_probs:
            probs = binarize_probabilities(probs, tf.cast(self.gamma, probs.dtype))
        y = tf.matmul(probs, self._heads(v))  # (B, heads, N, d)
        y = tf.transpose(y, [0, 2, 1, 3])
        return tf.reshape(y, [-1, h, w, c])

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[0])

    def get_config(self):
        return {
            **super().get_config(), "heads": self.heads, "binary_probs": self.binary_probs,
            "prob_init": self.prob_init,
        }


# ----------------------------------------------------------------------------- BNext


@_register
class ClipRange(tf.keras.constraints.Constraint):
    """Constraint clipping a weight to ``[min_value, max_value]`` after every update."""

    def __init__(self, min_value=0.0, max_value=1.0):
        if not min_value <= max_value:
            raise ValueError(f"ClipRange needs min_value <= max_value, got {min_value!r} > {max_value!r}")
        self.min_value = float(min_value)
        self.max_value = float(max_value)

    def __call__(self, w):
        return tf.clip_by_value(w, self.min_value, self.max_value)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


@_register
class TemperatureBinaryConv2D(BinaryConv2D):
    r"""BNext's binary conv: HardSign input, temperature-annealed kernel without scale.

    \\[
    y = \mathrm{sign}(x) \circledast q_T(W), \quad
    q_T(W) = \mathrm{sign}(W) \text{ if } T < 10^{-7}
    \text{ else } \mathrm{clip}(W/T, -1, 1)
    \\]

    ``temperature`` is the initial value of the layer's non-trainable scalar
    weight ``temperature`` (T). The default 0 gives a binary kernel (a trained
    BNext: 0.9^512 of the released 512-epoch schedule); training sets T with
    :class:`larq_esbnn.train.trainer.WeightTemperatureSchedule` (1.0 x 0.9 per
    epoch). The latent kernel starts at N(0, 0.001^2) as in the release and is
    clipped to +-``clip_value`` (1.5) after every update (the release clamps it
    in place before every training forward pass). The input quantizer is
    HardSign (``SteSign(clip_value=1.5)``). Padding and the symmetric stride-2
    flip are :class:`BinaryConv2D`'s.
    """

    def __init__(self, filters, kernel_size, strides=1, temperature=0.0, clip_value=HARDSIGN_CLIP, **kwargs):
        self.initial_temperature = float(temperature)
        self.clip_value = float(clip_value)
        kwargs.setdefault("input_quantizer", hardsign())
        kwargs.setdefault("kernel_initializer", tf.keras.initializers.RandomNormal(stddev=0.001))
        kwargs.setdefault("kernel_constraint", lq.constraints.WeightClip(self.clip_value))
        super().__init__(filters, kernel_size, strides=strides, **kwargs)

    def _make_kernel_quantizer(self):
        return TemperatureBinaryWeight(self._read_temperature)

    def _read_temperature(self):
        return self.temperature

    def build(self, input_shape):
        self.temperature = self.add_weight(
            name="temperature", shape=(), trainable=False,
            initializer=tf.keras.initializers.Constant(self.initial_temperature),
        )
        super().build(input_shape)

    def get_config(self):
        return {**super().get_config(), "temperature": self.initial_temperature, "clip_value": self.clip_value}


@_register
class InformationRecoupling(tf.keras.layers.Layer):
    r"""BNext's mix of the unit input and the binary branch: \\(m = \lambda x + (1 - \lambda) y\\).

    Inputs ``[x, y]`` (same shape); \\(\lambda\\) is one trainable weight per
    channel (``scale``), initialised to 0.5 and clipped to [0, 1] after every
    update (the release clamps it in place before the forward pass).
    """

    def build(self, input_shape):
        c = input_shape[0][-1]
        self.scale = self.add_weight(
            name="scale", shape=(c,), initializer=tf.keras.initializers.Constant(0.5),
            constraint=ClipRange(0.0, 1.0),
        )
        super().build(input_shape)

    def call(self, inputs):
        x, y = inputs
        return self.scale * x + (1 - self.scale) * y

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@_register
class UnusedWeight(tf.keras.layers.Layer):
    """Identity layer that holds one weight the computation never reads.

    The released BNext creates PReLUs it never calls (``activation1`` of every
    FFN unit, the stem's ``prelu``); PyTorch's ``parameters()`` and the
    published parameter counts include them. Keeping them here as trainable
    no-op weights (``alpha``, one per channel) makes the Keras count equal the
    released one and lets checkpoints round-trip; they get no gradient, so the
    optimizer never changes them (as in PyTorch). ``init`` is the release's
    initial value.
    """

    def __init__(self, init=0.25, **kwargs):
        super().__init__(**kwargs)
        self.init = float(init)

    def build(self, input_shape):
        self.alpha = self.add_weight(
            name="alpha", shape=(input_shape[-1],), initializer=tf.keras.initializers.Constant(self.init)
        )
        super().build(input_shape)

    def call(self, inputs):
        return tf.identity(inputs)

    def get_config(self):
        return {**super().get_config(), "init": self.init}
