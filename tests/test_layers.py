"""Layers and quantizers (issue 2): forward math, gradients, configs, errors."""

import os
import subprocess
import sys

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_esbnn import blocks, layers, quantizers


def _sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def _ref_conv(x, kernel, stride, pad_before, pad_after, pad_value):
    """Reference: sign the input, pad with ``pad_value``, 'valid' conv with alpha*sign(W)."""
    alpha = np.abs(kernel).mean(axis=(0, 1, 2), keepdims=True)
    w = alpha * _sign(kernel)
    xb = np.pad(_sign(x), [(0, 0), (pad_before, pad_after), (pad_before, pad_after), (0, 0)],
                constant_values=pad_value)
    return tf.nn.conv2d(xb, w, stride, "VALID").numpy()


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7)])
def test_binary_conv_matches_reference_padding(pad_value, stride, size):
    x = np.random.randn(2, size, size, 5).astype(np.float32)
    conv = layers.BinaryConv2D(6, 3, strides=stride, pad_value=pad_value)
    y = conv(x).numpy()
    kernel = conv.kernel.latent_variable.numpy()
    # PyTorch padding=1 on both sides, at stride 1 and 2
    expected = _ref_conv(x, kernel, stride, 1, 1, pad_value)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_binary_conv_tf_same_padding_when_not_symmetric():
    x = np.random.randn(1, 8, 8, 4).astype(np.float32)
    conv = layers.BinaryConv2D(3, 3, strides=2, symmetric=False)
    y = conv(x).numpy()
    expected = _ref_conv(x, conv.kernel.latent_variable.numpy(), 2, 0, 1, 0.0)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    with pytest.raises(ValueError, match="pad_value must be 0 or 1, got 0.5"):
        layers.BinaryConv2D(3, 3, pad_value=0.5)


def test_scaled_binary_weight_forward_and_gradient():
    w = tf.Variable(np.random.uniform(-1.6, 1.6, (3, 3, 4, 5)).astype(np.float32))
    r = tf.constant(np.random.randn(3, 3, 4, 5).astype(np.float32))
    q = quantizers.ScaledBinaryWeight()
    with tf.GradientTape() as tape:
        out = q(w)
        loss = tf.reduce_sum(out * r)
    grad = tape.gradient(loss, w).numpy()
    wn = w.numpy()
    alpha = np.abs(wn).mean(axis=(0, 1, 2), keepdims=True)
    np.testing.assert_allclose(out.numpy(), alpha * _sign(wn), rtol=1e-6)

    # the definition: gradient of sum(r * clip(W, -1, 1)), alpha constant; check it by
    # central finite differences on that surrogate
    def surrogate(v):
        return float(np.sum(r.numpy() * np.clip(v, -1, 1)))

    eps = 1e-3
    numeric = np.zeros_like(wn)
    for idx in np.ndindex(wn.shape):
        hi, lo = wn.copy(), wn.copy()
        hi[idx] += eps
        lo[idx] -= eps
        numeric[idx] = (surrogate(hi) - surrogate(lo)) / (2 * eps)
    away = np.abs(np.abs(wn) - 1) > 2 * eps  # the kink of clip is not differentiable
    np.testing.assert_allclose(grad[away], numeric[away], atol=1e-2)
    assert np.all(grad[np.abs(wn) > 1 + eps] == 0)
    # and it is not larq's magnitude-aware gradient (which scales by alpha)
    assert not np.allclose(grad, grad * np.broadcast_to(alpha, grad.shape))


def test_rsign_forward_and_bireal_gradient():
    layer = layers.RSign()
    x = tf.constant(np.linspace(-1.5, 1.5, 12, dtype=np.float32).reshape(1, 1, 3, 4))
    layer.build(x.shape)
    layer.bias.assign([0.1, -0.2, 0.3, 0.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    g = tape.gradient(y, x).numpy()
    t = x.numpy() + np.array([0.1, -0.2, 0.3, 0.0], np.float32)
    np.testing.assert_array_equal(y.numpy(), _sign(t))
    np.testing.assert_allclose(g, np.where(np.abs(t) <= 1, 2 - 2 * np.abs(t), 0), atol=1e-6)


def test_rprelu_and_learnable_bias():
    x = np.random.randn(2, 3, 3, 4).astype(np.float32)
    layer = layers.RPReLU()
    layer.build(x.shape)
    b0, s, b1 = np.random.randn(3, 4).astype(np.float32)
    layer.set_weights([b0, s, b1])
    t = x + b0
    np.testing.assert_allclose(layer(x).numpy(), np.maximum(t, 0) + s * np.minimum(t, 0) + b1, atol=1e-6)
    bias = layers.LearnableBias()
    bias.build(x.shape)
    bias.set_weights([b0])
    np.testing.assert_allclose(bias(x).numpy(), x + b0)


def test_channel_tile_is_whole_block():
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    y = layers.ChannelTile(4)(x).numpy()
    assert y.shape == (1, 1, 2, 12)
    np.testing.assert_array_equal(y[..., 3:6], x)  # block copy, not element repeat
    with pytest.raises(ValueError, match="reps must be >= 1, got 0"):
        layers.ChannelTile(0)


@pytest.mark.parametrize("padding", ["circular", "zero"])
def test_long_short_shift(padding):
    x = np.random.randn(2, 5, 6, 8).astype(np.float32)
    y = layers.LongShortShift(2, padding)(x).numpy()
    q = np.split(x, 4, axis=-1)
    expected = [np.roll(q[0], 2, 1), np.roll(q[1], -2, 1), np.roll(q[2], 2, 2), np.roll(q[3], -2, 2)]
    if padding == "zero":
        expected[0][:, :2] = 0
        expected[1][:, -2:] = 0
        expected[2][:, :, :2] = 0
        expected[3][:, :, -2:] = 0
    np.testing.assert_array_equal(y, np.concatenate(expected, -1))
    with pytest.raises(ValueError, match=r"channels \(6\) must be divisible by 4"):
        layers.LongShortShift(1)(np.zeros((1, 4, 4, 6), np.float32))


def test_circular_shift_commutes_with_bias_and_sign():
    """Why the zoo shifts the real tensor before the sign (keeps LCE binary convs)."""
    x = np.random.randn(2, 7, 7, 8).astype(np.float32)
    b = np.random.randn(8).astype(np.float32)
    shift = layers.LongShortShift(3)
    a = shift(_sign(x + b)).numpy()
    c = _sign(shift(x).numpy() + b)
    np.testing.assert_array_equal(a, c)


def _es_tensor(cfg, c_in, size=8):
    x = tf.keras.Input((size, size, c_in * cfg.width))
    b, _ = blocks.sign_input(x, cfg, "t")
    return x, b


@pytest.mark.parametrize("tau,groups", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_es_binary_conv_widths_and_binary_macs(tau, groups):
    cfg = blocks.BlockConfig(tau=tau, groups=groups)
    x, b = _es_tensor(cfg, 16)
    y = blocks.binary_branch(b, 32, 3, 1, cfg, "es")
    model = tf.keras.Model(x, y)
    assert y.shape[-1] == 32 * tau * groups
    convs = [layer for layer in model.layers if isinstance(layer, layers.BinaryConv2D)]
    assert len(convs) == groups
    for conv in convs:  # each group: C_in tau -> C_out / (tau g)
        assert conv.kernel.shape == (3, 3, 16 * tau, 32 // (tau * groups))
    # binary MACs per output pixel stay k^2 C_in C_out
    assert sum(int(np.prod(c.kernel.shape)) for c in convs) == 9 * 16 * 32


def test_es_binary_conv_output_is_tiled_copy():
    cfg = blocks.BlockConfig(tau=2)
    x, b = _es_tensor(cfg, 8)
    y = blocks.binary_branch(b, 8, 1, 1, cfg, "es")
    out = tf.keras.Model(x, y)(np.random.randn(1, 8, 8, 16).astype(np.float32)).numpy()
    assert out.shape[-1] == 16
    for k in range(4):  # tau^2 copies of the C_out / tau = 4 binary outputs
        np.testing.assert_array_equal(out[..., 4 * k: 4 * k + 4], out[..., :4])


def test_es_channel_errors_name_values():
    cfg = blocks.BlockConfig(tau=3)
    x, b = _es_tensor(cfg, 16)
    with pytest.raises(ValueError, match="16 channels are not divisible by tau\\*groups = 3\\*1"):
        blocks.binary_branch(b, 16, 3, 1, cfg, "bad")
    with pytest.raises(ValueError, match="tau must be a positive integer, got 0"):
        blocks.BlockConfig(tau=0)


def test_dynamic_thresholds_start_as_static_block():
    """A zero-initialised BCDNet-B block computes exactly its BCDNet-A block."""
    models = []
    for dynamic in (False, True):
        cfg = blocks.BlockConfig(dynamic=dynamic, ratio=4)
        x = tf.keras.Input((8, 8, 16))
        y = blocks.reactnet_block(x, 32, 2, cfg, "b1")
        models.append(tf.keras.Model(x, y))
    static, dyn = models
    for layer in static.layers:
        if layer.weights:
            values = [np.random.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in layer.weights]
            layer.set_weights(values)
            dyn.get_layer(layer.name).set_weights(values)
    ctx = [layer for layer in dyn.layers if isinstance(layer, layers.ContextualThresholds)]
    assert len(ctx) == 2 and ctx[0].w1.shape == (16, 4)
    data = np.random.randn(3, 8, 8, 16).astype(np.float32)
    np.testing.assert_array_equal(static(data).numpy(), dyn(data).numpy())
    # and once the thresholds move, the outputs differ (the wrapper is live)
    ctx[0].w2.assign(tf.ones_like(ctx[0].w2))
    assert not np.allclose(static(data).numpy(), dyn(data).numpy())


@pytest.mark.parametrize("layer", [
    layers.LearnableBias(), layers.RSign(), layers.RPReLU(), layers.ChannelTile(3),
    layers.ChannelSplit(2), layers.LongShortShift(2, "zero"), layers.ContextualThresholds([8, 8], ratio=2),
    layers.BinaryConv2D(8, 3, strides=2, pad_value=1.0, binary_weights=False),
    layers.SymmetricMaxPool2D(),
])
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    registered = tf.keras.utils.get_registered_object(f"larq_esbnn>{type(layer).__name__}")
    assert registered is type(layer)


def test_quantizer_is_serialisable_and_binary():
    q = quantizers.ScaledBinaryWeight()
    assert q.precision == 1
    again = lq.quantizers.deserialize(lq.quantizers.serialize(q))
    assert isinstance(again, quantizers.ScaledBinaryWeight)


def test_import_after_keras3_tensorflow_raises_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = "import tensorflow as tf\nimport larq_esbnn\n"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "ImportError: larq-esbnn needs Keras 2" in result.stderr
    assert "TF_USE_LEGACY_KERAS=1" in result.stderr


@pytest.mark.parametrize("setting, enabled", [(None, True), ("0", False)])
def test_import_turns_on_onednn_unless_the_user_chose(setting, enabled):
    """``import larq_esbnn`` before TensorFlow selects the oneDNN kernels (1.6-2x faster
    training steps on an AVX2 CPU, ``benchmarks/onednn.md``); ``TF_ENABLE_ONEDNN_OPTS=0``
    set by the user is kept."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = ("import larq_esbnn\nimport tensorflow as tf\n"
            "from tensorflow.python.util import _pywrap_util_port as port\nprint(port.IsMklEnabled())\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(enabled)
