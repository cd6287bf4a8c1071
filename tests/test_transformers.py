"""Binary transformers and MLPs (issue 15): BinaryViT, ES-BinaryViT, layers,
operation counts and LCE export."""

import numpy as np
import pytest
import tensorflow as tf

from larq_esbnn import blocks, export, models, report
from larq_esbnn.layers import (
    BinaryConv2D,
    BinaryLinear,
    ChannelAvgPool,
    LayerScale,
    PositionEmbedding,
    TokenAttention,
)
from larq_esbnn.models.binaryvit import CIFAR
from larq_esbnn.quantizers import binarize_probabilities, centred_binary_weight

layers = tf.keras.layers

BINARYVIT_S = 22_491_771  # released definition, measured in PyTorch (spec D)
BINARYVIT_S_BINARY = 21_196_800
S_CONFIG = dict(dims=(64, 128, 256, 512), depths=(3, 4, 8, 4), heads=(1, 2, 4, 8),
                reductions=(8, 4, 1, 1), mlp_ratios=(8, 8, 4, 4), patch=4)


def trainable(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def binary_weights(model):
    return int(sum(np.prod(w.shape) for w in model.weights if getattr(w, "precision", 32) == 1))


@pytest.fixture(scope="session")
def vit_s():
    """binaryvit_s and es_binaryvit_s at 224 and their summaries, built once."""
    built = {}
    for name in ("binaryvit_s", "es_binaryvit_s"):
        model = models.get(name)
        built[name] = (model, report.summary(model, print_fn=None, larq_summary=False))
    return built


# ------------------------------------------------------------- independent counts


def vit_counts(dims, depths, heads, reductions, mlp_ratios, patch, size=224, classes=1000, tau=1,
               pool_branches=2):
    """Trainable parameters, binary weights and BOPs of BinaryViT, from the design
    (spec D) and independently of the Keras build."""
    params = 3 * patch * patch * dims[0] + dims[0]  # stem conv with bias
    tokens = size // patch
    params += 2 * dims[0] + tokens * tokens * dims[0]  # BN, position embedding
    binary = bops = 0
    for s, (c, depth, r, ratio) in enumerate(zip(dims, depths, reductions, mlp_ratios)):
        n = tokens * tokens
        m = n // (r * r)
        att = 34 * c + 1 + (6 * c if r > 1 else 0)
        ffn = c + 5 * ratio * c + ratio * c + 7 * c + (tau - 1) * c * (1 + 6 * ratio)
        block = att + ffn + 4 * c + 4 * pool_branches * c
        lin = 4 * c * c + (c * c if r > 1 else 0) + 2 * ratio * c * c
        params += depth * (block + lin)
        binary += depth * lin
        lin_macs = 2 * n * c * c + (3 * m * c * c if r > 1 else 2 * n * c * c) + 2 * n * ratio * c * c
        bops += depth * (lin_macs + 2 * n * m * c)
        if s + 1 < len(dims):
            out = dims[s + 1]
            tokens //= 2
            params += 4 * c * out + 3 * c + 5 * out + tokens * tokens * out
            binary += 4 * c * out
            bops += tokens * tokens * 4 * c * out
    params += 2 * dims[-1] + dims[-1] * classes + classes
    return params, binary, bops


def test_independent_count_reproduces_the_released_figures():
    params, binary, _ = vit_counts(**S_CONFIG)
    assert (params, binary) == (BINARYVIT_S, BINARYVIT_S_BINARY)


def test_binaryvit_s_parameter_count(vit_s):
    model, s = vit_s["binaryvit_s"]
    assert trainable(model) == BINARYVIT_S
    assert binary_weights(model) == BINARYVIT_S_BINARY
    assert s["binary_params"] == BINARYVIT_S_BINARY
    assert model.output_shape == (None, 1000)


def test_es_binaryvit_s_keeps_binary_weights_and_bops(vit_s):
    (base, sb), (es, se) = vit_s["binaryvit_s"], vit_s["es_binaryvit_s"]
    params, binary, bops = vit_counts(**S_CONFIG, tau=2)
    assert trainable(es) == params == BINARYVIT_S + 136_896
    assert binary_weights(es) == binary == BINARYVIT_S_BINARY
    assert se["bops"] == sb["bops"] == bops
    # ES widens only the real-valued FFN stream: a few more FLOPs, none in attention
    assert se["flops"] == sb["flops"]  # MACs only: the wider stream is element-wise work
    wide = report.summary(es, print_fn=None, larq_summary=False, convention="paper-extended")
    narrow = report.summary(base, print_fn=None, larq_summary=False, convention="paper-extended")
    assert wide["flops"] > narrow["flops"]


def test_es_capacity_doubles_in_the_ffn_only(vit_s):
    base = {r["layer"]: r for r in report.capacity(vit_s["binaryvit_s"][0])}
    es = {r["layer"]: r for r in report.capacity(vit_s["es_binaryvit_s"][0])}
    assert base.keys() == es.keys()
    for name, row in base.items():
        factor = 2 if "_ffn_fc" in name else 1
        assert es[name]["terms"] == factor * row["terms"], name
    assert base["v0_ffn_fc2"]["terms"] == 512 and es["v0_ffn_fc2"]["terms"] == 1024
    assert base["v0_att_q"]["terms"] == es["v0_att_q"]["terms"] == 64


@pytest.mark.parametrize("tau", [1, 2])
def test_cifar_pair_counts_follow_from_the_design(tau):
    cfg = CIFAR
    model = models.get("es_binaryvit_cifar" if tau == 2 else "binaryvit_cifar")
    params, binary, bops = vit_counts(cfg["dims"], cfg["depths"], cfg["heads"], cfg["reductions"],
                                      cfg["mlp_ratios"], cfg["patch_size"], size=32, classes=10, tau=tau)
    s = report.summary(model, print_fn=None, larq_summary=False)
    assert (trainable(model), binary_weights(model), s["bops"]) == (params, binary, bops)


def test_summary_counts_attention(vit_s):
    _, s = vit_s["binaryvit_s"]
    rows = {r["name"]: r for r in s["layers"]}
    # stage 1: 56x56 queries, 7x7 keys (R = 8), 64 channels, 1 head
    att = rows["v0_att_attn"]
    assert att["bops"] == 2 * 3136 * 49 * 64
    assert att["flops"] == 3136 * 49  # softmax
    assert "QK binary" in att["note"] and "PV binary" in att["note"]
    # stage 3: 14x14 tokens, no reduction, 4 heads
    assert rows["v7_att_attn"]["bops"] == 2 * 196 * 196 * 256
    assert rows["v7_att_attn"]["flops"] == 4 * 196 * 196
    # real parts: stem and classifier MACs plus the softmaxes
    softmax = sum(r["flops"] for n, r in rows.items() if n.endswith("_attn"))
    assert s["flops"] == 48 * 64 * 3136 + 512 * 1000 + softmax


def test_real_valued_attention_inputs_count_as_flops():
    inp = [tf.keras.Input((4, 4, 8)) for _ in range(3)]
    out = TokenAttention(2, binary_probs=False)(inp)
    s = report.summary(tf.keras.Model(inp, out), print_fn=None, larq_summary=False)
    assert s["bops"] == 0 and s["flops"] == 2 * 16 * 16 * 8 + 2 * 16 * 16


def test_es_ffn_equals_the_spec_formulation():
    """The early cut to C channels (no dead parameters) equals the spec's form:
    Lin2's output tiled tau^2 times, BN / RPReLU / LayerScale over all tau C
    channels, then the first C channels. The spec form gets tau C-wide
    parameters whose first C are the model's and the rest arbitrary."""
    tf.keras.backend.set_floatx("float64")
    try:
        c, ratio, tau = 8, 2, 2
        inp = tf.keras.Input((4, 4, c))
        cfg = blocks.BlockConfig(tau=tau)
        model = tf.keras.Model(inp, blocks.vit_ffn(inp, ratio, cfg, "f"))
        rng = np.random.default_rng(0)
        for w in model.weights:
            value = rng.normal(size=w.shape)
            w.assign(np.abs(value) + 0.5 if "variance" in w.name else value)
        x = rng.normal(size=(2, 4, 4, c))
        got = model(x, training=False).numpy()

        def params(name, width):
            """The layer's per-channel parameters, extended to ``width`` with noise."""
            out = []
            for w in model.get_layer(name).weights:
                v = w.numpy()
                extra = rng.normal(size=width - v.shape[0])
                out.append(np.concatenate([v, np.abs(extra) + 0.5 if "variance" in w.name else extra]))
            return out

        def bn(name, y):
            g, b, m, v = params(name, y.shape[-1])
            return (y - m) / np.sqrt(v + 1e-5) * g + b

        def rprelu(name, y):
            b_in, slope, b_out = params(name, y.shape[-1])
            t = y + b_in
            return np.where(t > 0, t, slope * t) + b_out

        def lin(name, y):
            k = model.get_layer(name).kernel.latent_variable.numpy()[0, 0]  # (in, out)
            q = np.abs(k).mean(0) * np.where(k - k.mean(0) >= 0, 1.0, -1.0)
            s = np.where(y + model.get_layer(f"{name}_move").bias.numpy() >= 0, 1.0, -1.0)
            return s @ q

        e = np.tile(x, tau)
        u = rprelu("f_fc1_rprelu", bn("f_fc1_bn", np.tile(lin("f_fc1", e), tau * tau)) + np.tile(e, ratio))
        pooled = u.reshape(*u.shape[:-1], -1, ratio).mean(-1)  # tau C wide
        v = rprelu("f_fc2_rprelu", bn("f_fc2_bn", np.tile(lin("f_fc2", u), tau * tau)) + pooled)
        gamma, beta = params("f_fc2_scale", tau * c)
        want = (v * gamma + beta)[..., :c]
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    finally:
        tf.keras.backend.set_floatx("float32")


# ------------------------------------------------------------------- layers


def test_centred_binary_weight_forward_and_gradient():
    rng = np.random.default_rng(1)
    w = tf.constant(rng.normal(size=(1, 1, 6, 3)) * 0.8)
    with tf.GradientTape() as tape:
        tape.watch(w)
        q = centred_binary_weight(w)
        loss = tf.reduce_sum(q * tf.constant(rng.normal(size=(1, 1, 6, 3))))
    g = tape.gradient(loss, w).numpy()
    wn = w.numpy()
    centred = wn - wn.mean(axis=2, keepdims=True)
    alpha = np.abs(wn).mean(axis=2, keepdims=True)
    np.testing.assert_array_equal(q.numpy(), alpha * np.where(centred >= 0, 1.0, -1.0))
    # STE of clip(centred): masked upstream gradient minus its mean over the row
    dy = tf.constant(rng.normal(size=(1, 1, 6, 3)))
    with tf.GradientTape() as tape:
        tape.watch(w)
        loss = tf.reduce_sum(centred_binary_weight(w) * dy)
    g = tape.gradient(loss, w).numpy()
    masked = np.where(np.abs(centred) <= 1, dy.numpy(), 0)
    np.testing.assert_allclose(g, masked - masked.mean(axis=2, keepdims=True), atol=1e-12)


def test_binarize_probabilities_forward_and_gradient():
    p = tf.constant([[0.001, 0.0024, 0.0026, 0.004, 0.0075, 0.3]], tf.float64)
    alpha = tf.constant(0.005, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([p, alpha])
        out = binarize_probabilities(p, alpha)
        loss = tf.reduce_sum(out * tf.constant([[1.0, 2, 3, 4, 5, 6]], tf.float64))
    dp, da = tape.gradient(loss, [p, alpha])
    np.testing.assert_allclose(out.numpy(), [[0, 0, 0.005, 0.005, 0.005, 0.005]])
    q = p.numpy() / 0.005
    middle = (q >= 0) & (q <= 1)
    np.testing.assert_allclose(dp.numpy(), np.where(middle, [[1.0, 2, 3, 4, 5, 6]], 0))
    want = np.sum((middle * (np.round(q) - q) + (q > 1)) * [[1.0, 2, 3, 4, 5, 6]])
    np.testing.assert_allclose(da.numpy(), want)


def test_token_attention_matches_numpy_in_float64():
    tf.keras.backend.set_floatx("float64")
    try:
        rng = np.random.default_rng(2)
        heads, c = 2, 8
        q, k, v = rng.normal(size=(2, 4, 4, c)), rng.normal(size=(2, 2, 2, c)), rng.normal(size=(2, 2, 2, c))
        layer = TokenAttention(heads, prob_init=0.2)
        got = layer([q, k, v]).numpy()
        d = c // heads
        qh = q.reshape(2, 16, heads, d).transpose(0, 2, 1, 3)
        kh = k.reshape(2, 4, heads, d).transpose(0, 2, 1, 3)
        vh = v.reshape(2, 4, heads, d).transpose(0, 2, 1, 3)
        s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        p = np.clip(np.round(p / 0.2), 0, 1) * 0.2
        want = (p @ vh).transpose(0, 2, 1, 3).reshape(2, 4, 4, c)
        np.testing.assert_allclose(got, want, atol=1e-12)
    finally:
        tf.keras.backend.set_floatx("float32")


def test_small_layers():
    x = np.arange(2 * 2 * 2 * 6, dtype=np.float32).reshape(2, 2, 2, 6)
    np.testing.assert_array_equal(ChannelAvgPool(3)(x).numpy(), x.reshape(2, 2, 2, 2, 3).mean(-1))
    with pytest.raises(ValueError, match="6 channels do not split into groups of 4"):
        ChannelAvgPool(4)(x)
    ls = LayerScale(0.1)
    np.testing.assert_allclose(ls(x).numpy(), 0.1 * x)
    pos = PositionEmbedding()
    y = pos(x).numpy()
    assert pos.embedding.shape == (2, 2, 6)
    np.testing.assert_allclose(y, x + pos.embedding.numpy()[None], rtol=1e-6)
    # 1-D pooling with zero padding counted in the mean (PyTorch's default)
    inp = tf.keras.Input((5, 5, 1))
    pooled = tf.keras.Model(inp, blocks._axis_pool(inp, 3, "h", "p"))
    img = np.random.default_rng(3).normal(size=(1, 5, 5, 1)).astype(np.float32)
    padded = np.pad(img, ((0, 0), (1, 1), (0, 0), (0, 0)))
    want = (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3
    np.testing.assert_allclose(pooled(img).numpy(), want, rtol=1e-6, atol=1e-6)


def test_binary_linear_is_a_centred_1x1_binary_conv():
    layer = BinaryLinear(4)
    layer.build((None, 3, 3, 8))
    assert isinstance(layer, BinaryConv2D) and layer.kernel_size == (1, 1)
    assert layer.kernel.precision == 1
    again = BinaryLinear.from_config(layer.get_config())
    assert again.centred and type(again.kernel_quantizer).__name__ == "CentredBinaryWeight"
    real = BinaryLinear(4, binary_weights=False)
    assert real.kernel_quantizer is None


# ------------------------------------------------------------------- models


def test_variants_and_shapes():
    assert models.entry("es_binaryvit_s").defaults == {"tau": 2}
    # the token map's shape does not depend on the depths (one block per stage: 4 of 19 blocks to build)
    m = models.binaryvit_s(input_shape=(64, 64, 3), include_top=False, depths=(1, 1, 1, 1))
    assert m.output_shape == (None, 2, 2, 512)
    with pytest.raises(TypeError):
        models.binaryvit_s((224, 224, 3))


@pytest.mark.parametrize("kwargs,message", [
    (dict(input_shape=(48, 48, 3)), "input height 48 is not allowed.*multiple of 32"),
    (dict(tau=3, input_shape=(64, 64, 3)), "width C = 64 is not divisible by tau = 3"),
    (dict(depths=(1, 1, 1)), "per-stage lists must have one length"),
    (dict(heads=(3, 2, 4, 8)), "width 64 does not split into 3 heads"),
    (dict(patch_size=0), "patch_size must be a positive integer"),
    (dict(num_classes=0), "num_classes must be an integer >= 1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.binaryvit_s(**kwargs)


def test_two_step_recipe_weights_transfer():
    """Step 1 (real weights) and step 2 (binary) have the same variables."""
    a = models.get("es_binaryvit_cifar", binary_weights=False)
    b = models.get("es_binaryvit_cifar")
    assert [w.shape for w in a.weights] == [w.shape for w in b.weights]
    assert binary_weights(a) == 0 and binary_weights(b) > 0
    assert models.transfer_weights(a, b) == []


def test_trains_one_step_on_the_fused_path():
    from larq_esbnn.train.trainer import BNNTrainer, FusedAdamW

    model = models.get("es_binaryvit_cifar")
    trainer = BNNTrainer(model)
    # the trainer's optimizer (half the tracing of the stock Adam's ~20 ops per
    # variable); no weight decay, so only a gradient can change a weight
    trainer.compile(optimizer=FusedAdamW(1e-3, weight_decay=0.0))
    x = np.random.default_rng(4).normal(size=(8, 32, 32, 3)).astype(np.float32)
    y = tf.one_hot(np.arange(8) % 10, 10)
    before = [w.numpy().copy() for w in model.trainable_weights]
    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    names = [w.name for w, c in zip(model.trainable_weights, changed) if not c]
    # the pooling-branch LayerScales start at gamma = 0; everything gets a gradient
    assert not names, names


# ------------------------------------------------------------------- export


@pytest.fixture(scope="session")
def cifar_export():
    model = models.get("es_binaryvit_cifar")
    rng = np.random.default_rng(6)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c),
                               rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)])
    return model, export.export_tflite(model, fast=True)


def test_every_binary_linear_becomes_a_bconv(cifar_export):
    model, fb = cifar_export
    check = export.check_export(model, fb)
    assert check.ok, check.format()
    n_linear = sum(isinstance(layer, BinaryLinear) for layer in model.layers)
    n_merge = sum(type(layer) is BinaryConv2D for layer in model.layers)
    assert check.found == n_linear + n_merge == 5 * 6 + 2 + 3  # 2 blocks with a reduction linear
    ops = check.op_counts
    # what stays float: the stem conv and the attention core
    assert ops.get("CONV_2D") == 1 and "FULLY_CONNECTED" in ops
    # the converter lowers the 2 attention matmuls of each of the 5 blocks to float
    # FULLY_CONNECTED ops (unrolled; seen: 39 with the classifier) or BATCH_MATMUL
    assert ops.get("SOFTMAX") == 5, str(sorted(ops.items()))
    assert ops.get("BATCH_MATMUL", 0) + ops.get("FULLY_CONNECTED", 0) >= 2 * 5 + 1, str(sorted(ops.items()))


def test_lce_output_matches_keras(cifar_export):
    model, fb = cifar_export
    x = np.random.default_rng(7).normal(size=(3, 32, 32, 3)).astype(np.float32)
    y, z = model(x, training=False).numpy(), export.lce_predict(fb, x)
    diff = np.abs(y - z)
    # a pre-sign value within float error of 0 may binarise differently; most agree
    assert np.median(diff) < 1e-3 * np.abs(y).max() + 1e-4, (np.median(diff), diff.max())


# ------------------------------------------------------------------- MLP pilots


def mixer_counts(n, c, depth, e_tok=4, e_ch=4):
    """Trainable / binary parameters and BOPs of ``depth`` binary Mixer blocks on
    n tokens x c channels (see :func:`larq_esbnn.blocks.mixer_block`)."""
    binary = 2 * e_tok * n * n + 2 * e_ch * c * c
    real = 2 * c + (3 + 6 * e_tok) * n + (5 + 6 * e_ch) * c
    bops = c * 2 * e_tok * n * n + n * 2 * e_ch * c * c
    return depth * (binary + real), depth * binary, depth * bops


@pytest.mark.parametrize("kwargs,size", [
    (dict(), 224),
    (dict(width=64, depth=2, patch_size=8, token_expansion=2, channel_expansion=3, num_classes=10), 32),
])
def test_mixer_counts_follow_from_the_design(kwargs, size):
    model = models.mlp_mixer_s_binary(input_shape=(size, size, 3), **kwargs)
    c, p = kwargs.get("width", 512), kwargs.get("patch_size", 16)
    classes = kwargs.get("num_classes", 1000)
    n = (size // p) ** 2
    params, binary, bops = mixer_counts(n, c, kwargs.get("depth", 8), kwargs.get("token_expansion", 4),
                                        kwargs.get("channel_expansion", 4))
    params += 3 * p * p * c + c + 2 * c + c * classes + classes
    s = report.summary(model, print_fn=None, larq_summary=False)
    assert (trainable(model), binary_weights(model), s["bops"]) == (params, binary, bops)
    if size == 224:
        assert (params, binary) == (20_312_904, 19_235_840)  # the docstring's figures


def test_reactnet_18_mixer_replaces_the_last_three_conv_layers():
    hybrid = models.reactnet_18_mixer()
    base = models.reactnet_18()
    params, binary, bops = mixer_counts(49, 512, 3)
    removed = 3 * (9 * 512 * 512 + 6 * 512)
    assert trainable(hybrid) == trainable(base) - removed + params == 11_017_985
    assert binary_weights(hybrid) == binary_weights(base) - 3 * 9 * 512 * 512 + binary == 10_256_664
    sh = report.summary(hybrid, print_fn=None, larq_summary=False)
    sb = report.summary(base, print_fn=None, larq_summary=False)
    assert sh["bops"] == sb["bops"] - 3 * 9 * 512 * 512 * 49 + bops


def test_mixer_models_export_with_binary_token_and_channel_mlps():
    model = models.reactnet_18_mixer(input_shape=(64, 64, 3), num_classes=10)
    fb = export.export_tflite(model, fast=True)
    check = export.check_export(model, fb)
    assert check.ok, check.format()
    assert check.found == 13 + 3 * 4  # 13 conv layers left, 4 binary linears per Mixer block
