"""The fused training path (issue 18) computes the same function as the plain Keras
path: identical forward values and losses, gradients equal up to the order of
floating-point summation."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_esbnn import layers as zl
from larq_esbnn import models
from larq_esbnn.quantizers import approx_sign_train
from larq_esbnn.train.trainer import BNNTrainer


@pytest.fixture
def float64():
    tf.keras.backend.set_floatx("float64")
    yield
    tf.keras.backend.set_floatx("float32")


def _both_paths(model, x, y):
    out = {}
    for fast in (True, False):
        trainer = BNNTrainer(model, fused_training=fast)
        per_example, logits, grads = tf.function(trainer.loss_and_gradients)(x, y)
        # None: a variable the loss does not reach (BCDNet's distillation head without a teacher)
        out[fast] = per_example.numpy(), logits.numpy(), [None if g is None else g.numpy() for g in grads]
    return out[True], out[False]


# resnet20: symmetric stride-2 flips; es_g_resnet20: ES tiling and group splits;
# bcdnet_b_18: MLP shift blocks and contextual thresholds in front of binary convs
@pytest.mark.parametrize("name,size", [("resnet20", 32), ("es_g_resnet20", 32), ("bcdnet_b_18", 64)])
def test_fused_path_equals_plain_keras_in_float64(name, size, float64):
    model = models.get(name, input_shape=(size, size, 3), num_classes=10)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((4, size, size, 3)))
    y = tf.one_hot(rng.integers(0, 10, 4), 10, dtype=tf.float64)
    (loss_f, logits_f, grads_f), (loss_p, logits_p, grads_p) = _both_paths(model, x, y)
    # forward: the same values bit for bit (the fused ops compute t, beta t, +-1 exactly as the plain ones)
    np.testing.assert_array_equal(logits_f, logits_p)
    np.testing.assert_array_equal(loss_f, loss_p)
    # backward: only the order of the per-channel sums differs -> relative 1e-12 in float64
    assert len(grads_f) == len(grads_p) == len(model.trainable_variables)
    for v, gf, gp in zip(model.trainable_variables, grads_f, grads_p):
        assert (gf is None) == (gp is None), v.name
        if gp is not None:
            np.testing.assert_allclose(gf, gp, rtol=0, atol=1e-12 * max(np.abs(gp).max(), 1e-30), err_msg=v.name)


def test_fused_path_in_float32_within_rounding():
    """In float32 the forward is still exact; gradients agree to 1e-4 of each
    variable's largest gradient: per-channel sums run over 8 x 32 x 32 = 8,192
    terms of both signs in another order, and float32 keeps ~7 digits (a 1.4e-5
    relative difference was seen on an RPReLU offset)."""
    model = models.get("es_resnet20")
    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((8, 32, 32, 3)).astype(np.float32))
    y = tf.one_hot(rng.integers(0, 10, 8), 10)
    (loss_f, logits_f, grads_f), (loss_p, logits_p, grads_p) = _both_paths(model, x, y)
    np.testing.assert_array_equal(logits_f, logits_p)
    np.testing.assert_array_equal(loss_f, loss_p)
    for v, gf, gp in zip(model.trainable_variables, grads_f, grads_p):
        np.testing.assert_allclose(gf, gp, rtol=0, atol=1e-4 * max(np.abs(gp).max(), 1e-30), err_msg=v.name)


def test_approx_sign_train_equals_larq_bit_for_bit():
    x = tf.constant([-2.0, -1.0, -0.5, -0.0, 0.0, 0.25, 1.0, 1.5, 3.0])
    dy = tf.constant(np.linspace(-1, 2, 9).astype(np.float32))
    for fn in (approx_sign_train, lq.quantizers.approx_sign):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        if fn is approx_sign_train:
            fused = y.numpy(), tape.gradient(y, x, dy).numpy()
        else:
            plain = y.numpy(), tape.gradient(y, x, dy).numpy()
    np.testing.assert_array_equal(fused[0], plain[0])
    np.testing.assert_array_equal(fused[1], plain[1])
    np.testing.assert_array_equal(fused[0], [-1, -1, -1, 1, 1, 1, 1, 1, 1])


def test_rprelu_gradient_matches_its_formula(float64):
    rng = np.random.default_rng(3)
    layer = zl.RPReLU()
    x = tf.constant(rng.standard_normal((2, 3, 3, 4)))
    layer.build(x.shape)
    layer.set_weights([rng.standard_normal(4), rng.uniform(0.1, 2, 4), rng.standard_normal(4)])
    g = tf.constant(rng.standard_normal((2, 3, 3, 4)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    dx, db1, ds, db2 = tape.gradient(y, [x] + layer.trainable_variables, g)
    b1, s, _ = layer.get_weights()
    t = x.numpy() + b1
    np.testing.assert_allclose(dx, np.where(t > 0, g, s * g), rtol=1e-14)
    np.testing.assert_allclose(db1, np.where(t > 0, g, s * g).sum((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(ds, (g.numpy() * np.minimum(t, 0)).sum((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(db2, g.numpy().sum((0, 1, 2)), rtol=1e-12)


def test_rprelu_inference_select_equals_the_plain_formula_bit_for_bit():
    """Inference takes ``where(t > 0, t, beta t) + zeta`` (fewer passes over the
    tensor); the plain path's ``relu(t) - beta relu(-t) + zeta`` must give the same
    bits, slopes above 1 or below 0 and t = 0 included."""
    rng = np.random.default_rng(5)
    layer = zl.RPReLU()
    x = rng.standard_normal((4, 5, 5, 6)).astype(np.float32)
    b1 = rng.standard_normal(6).astype(np.float32)
    x[0, 0, 0] = -b1  # t = 0 exactly
    layer.build(x.shape)
    layer.set_weights([b1, np.array([0.25, 1.7, -0.3, 0.0, 3.0, 1.0], np.float32), rng.standard_normal(6).astype(np.float32)])
    with zl.no_fused_training():
        plain = layer(x, training=True).numpy()
    inference = layer(x, training=False).numpy()
    np.testing.assert_array_equal(inference, plain)
    assert np.array_equal(np.signbit(inference), np.signbit(plain))


def test_plain_training_switch_and_default():
    assert zl.fused_training(True) and not zl.fused_training(False) and not zl.fused_training(None)
    with zl.no_fused_training():
        assert not zl.fused_training(True)
    assert zl.fused_training(True)
    assert BNNTrainer(models.get("resnet20")).fused_training  # larq-esbnn train's default
