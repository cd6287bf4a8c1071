"""LCE export: op counts of every zoo model, Keras/LCE equality, the stem rewrite,
agreement on real CIFAR-10 images, the CLI.

Conversions use ``export_tflite(..., fast=True)`` (LCE's graph-def route, same ops
as ``convert_keras_model`` - checked once below - without the SavedModel export
that costs ~5x the time). ImageNet models convert at 32x32: the op counts do not
depend on the input size (checked on one model at two sizes).
"""

import functools
import tarfile

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from test_models import ONE_BLOCK_PER_STAGE

from larq_esbnn import blocks, cli, export, models
from larq_esbnn.layers import BinaryConv2D

layers = tf.keras.layers


def _keras(model, x):
    return np.asarray(model(x, training=False))


def _assert_lce_matches(model, fb, x):
    """LCE equals Keras up to float error on every image whose signs all agree.

    A pre-sign value within ~1e-6 of 0 can binarise differently (Keras sums the
    scaled +-1 products in float, LCE counts bits; which values land that close
    depends on the machine's float kernels), and in a deep network one such flip
    moves all of that image's later values. A conversion error (padding, layout,
    a wrong scale) moves every image. So: per image, the median difference is
    either float error (< 1e-4) or that image had a flip; at least one image must
    match, and every matching image must match everywhere to a few flips."""
    y, z = _keras(model, x), export.lce_predict(fb, x)
    diff = np.abs(y - z).reshape(len(x), -1)
    medians = np.median(diff, axis=1)
    exact = medians < 1e-4
    assert exact.any(), f"no image agrees: per-image median |Keras - LCE| {medians}"
    scale = np.abs(y).max()
    assert diff[exact].max() < 0.05 * scale + 1e-4, (diff[exact].max(), scale)
    return diff[exact].max()


def _tiny(build, shape=(8, 8, 32)):
    inp = tf.keras.Input(shape)
    return tf.keras.Model(inp, build(inp))


@functools.lru_cache(maxsize=3)
def _zoo(name, size=None):
    """The last few zoo models built, kept for the next test that asks for them
    (building the 46 M-parameter BCDNets takes longer than converting them); not
    all of them: every model kept at once held several GB for the whole session.
    size None = the model's smallest allowed input (32 for both families).
    BinaryViT-S with one block per stage (tests/test_models.py: every distinct
    block once; the op counts are exact for the model converted)."""
    size = size or (32 if models.entry(name).input_size == 224 else models.entry(name).input_size)
    return models.get(name, input_shape=(size, size, 3), **ONE_BLOCK_PER_STAGE.get(name, {}))


def _randomise_bn(model, seed=0):
    """Trained-looking BN: non-trivial gamma / beta / moving statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c),
                rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c),
            ])


# ------------------------------------------------------------ single layers


@pytest.mark.parametrize("pad_value", [0, 1])
@pytest.mark.parametrize("strides", [1, 2])
def test_binary_conv2d_converts_exactly(pad_value, strides):
    model = _tiny(lambda x: BinaryConv2D(16, 3, strides=strides, pad_value=pad_value)(x))
    fb = export.export_tflite(model, fast=True)
    ops = export.inspect_flatbuffer(fb)
    assert ops.get("LceBconv2d") == 1 and "CONV_2D" not in ops, ops
    # the symmetric stride-2 padding is flip -> bconv -> flip
    assert ops.get("REVERSE_V2", 0) == (2 if strides == 2 else 0), ops
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 32)).astype(np.float32)
    assert np.abs(_keras(model, x) - export.lce_predict(fb, x)).max() < 1e-4


def test_fast_route_gives_the_same_ops_as_convert_keras_model():
    def build(x):
        b = blocks.BlockConfig(tau=2)
        y = blocks.basic_layer(x, 32, 2, b, "l0")
        return blocks.basic_layer(y, 32, 1, b, "l1")

    model = _tiny(build, (8, 8, 64))
    slow = export.export_tflite(model)
    fast = export.export_tflite(model, fast=True)
    assert export.inspect_flatbuffer(slow) == export.inspect_flatbuffer(fast)
    assert export.inspect_flatbuffer(fast)["LceBconv2d"] == 2


def test_check_export_names_a_binary_layer_that_falls_back():
    # a Heaviside (0/1) input is binary for larq but not sign-like for LCE
    model = _tiny(lambda x: layers.Add()([
        BinaryConv2D(32, 3, name="ok_conv")(x),
        lq.layers.QuantConv2D(32, 3, padding="same", use_bias=False, name="heavy_conv",
                              input_quantizer="ste_heaviside", kernel_quantizer="ste_sign")(x),
    ]))
    fb = export.export_tflite(model, fast=True)
    check = export.check_export(model, fb)
    assert (check.expected, check.found) == (2, 1)
    assert check.fallbacks == ["heavy_conv"] and not check.ok
    assert "heavy_conv" in check.format() and "MISMATCH" in check.format()


def test_zero_padded_shift_stays_float_by_design():
    cfg = blocks.BlockConfig(shift_padding="zero")
    model = _tiny(lambda x: blocks.mlp_block(x, cfg, "mlp0", long_shift=2), (6, 6, 32))
    assert export.expected_bconv_count(model) == 1  # the pointwise branch only
    fb = export.export_tflite(model, fast=True)
    check = export.check_export(model, fb)
    assert check.ok and check.found == 1
    assert check.float_by_design == ["mlp0_short", "mlp0_long"]
    assert check.op_counts.get("CONV_2D") == 2
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 32)).astype(np.float32)
    _assert_lce_matches(model, fb, x)


def test_circular_shift_and_contextual_thresholds_stay_binary():
    def build(x):
        y = blocks.reactnet_block(x, 32, 1, blocks.BlockConfig(dynamic=True), "b1")
        return blocks.mlp_block(y, blocks.BlockConfig(), "mlp0", long_shift=2)

    model = _tiny(build, (6, 6, 32))
    ctx = [layer for layer in model.layers if layer.name.endswith("_ctx")]
    rng = np.random.default_rng(2)
    for layer in ctx:  # non-zero thresholds, so they matter
        layer.set_weights([rng.normal(0, 0.3, w.shape) for w in layer.get_weights()])
    fb = export.export_tflite(model, fast=True)
    check = export.check_export(model, fb)
    assert check.ok and check.found == 5 and not check.float_by_design, check.format()
    x = rng.normal(size=(2, 6, 6, 32)).astype(np.float32)
    _assert_lce_matches(model, fb, x)


# --------------------------------------------------------- the stem rewrite


def test_lce_mis_fuses_symmetric_stride2_padding_and_the_rewrite_fixes_it():
    model = _tiny(lambda x: layers.Conv2D(8, 3, strides=2, use_bias=False, name="c")(
        layers.ZeroPadding2D(1, name="p")(x)), (16, 16, 3))
    x = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype(np.float32)
    assert export.lce_hazards(model)
    raw = export.export_tflite(model, fast=True)
    # LCE 0.16 folds the pad into a 'same' conv padding (0, 1): wrong border
    assert np.abs(_keras(model, x) - export.lce_predict(raw, x)).max() > 0.1
    fixed = export.optimize_for_inference(model)
    assert not export.lce_hazards(fixed)
    np.testing.assert_allclose(_keras(fixed, x), _keras(model, x), atol=1e-5)
    fb = export.export_tflite(fixed, fast=True)
    assert np.abs(_keras(model, x) - export.lce_predict(fb, x)).max() < 1e-4


@pytest.mark.parametrize("name", ["reactnet_a", "reactnet_18", "bcdnet_b"])
def test_optimize_for_inference_keeps_outputs_and_names(name):
    model = _zoo(name)
    _randomise_bn(model)
    fast = export.optimize_for_inference(model)
    assert [layer.name for layer in fast.layers] == [layer.name for layer in model.layers]
    assert isinstance(fast.get_layer("stem_conv"), export.FlippedSameConv2D)
    size = model.input_shape[1]
    x = np.random.default_rng(4).normal(size=(2, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(_keras(fast, x), _keras(model, x), atol=1e-4, rtol=1e-4)
    assert not any("ZeroPadding2D" in w for w in export.lce_hazards(fast))


def test_optimize_for_inference_leaves_models_without_the_pattern_alone():
    model = _zoo("resnet20")
    assert export.optimize_for_inference(model) is model


def test_small_maps_are_flagged():
    assert any("smaller than the kernel" in w for w in export.lce_hazards(_zoo("reactnet_18")))
    assert not export.lce_hazards(export.optimize_for_inference(_zoo("reactnet_18", 96)))


# ------------------------------------------------------------- every model


NOT_IN_SWEEP = {"bnext_t", "es_bnext_t", "bnext_s", "bnext_m", "bnext_l", "es_binaryvit_cifar", "reactnet_18_mixer"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if models.entry(n).input_size == 224 else n
    for n in models.names()
    if models.entry(n).task == "classification"  # detectors: tests/test_detection.py
    # checked with exact bconv counts in their own files, not converted twice:
    # BNext-T / ES-T (tests/test_bnext.py), es_binaryvit_cifar and reactnet_18_mixer
    # (tests/test_transformers.py); S / M / L (69-327 M weights) add no layer class
    if n not in NOT_IN_SWEEP
])
def test_every_model_exports_with_the_expected_bconv_count(name):
    model = export.optimize_for_inference(_zoo(name))
    fb = export.export_tflite(model, fast=True)
    check = export.check_export(model, fb)
    if not models.entry(name).binary:  # the real-valued teacher: nothing to binarize
        assert check.expected == check.found == 0 and "LceBconv2d" not in check.op_counts
        return
    assert check.expected > 0
    assert check.ok, check.format()
    assert not check.float_by_design
    assert "CONV_2D" in check.op_counts  # the real-valued stem stays float


def test_bconv_count_does_not_depend_on_the_input_size():
    counts = []
    for size in (32, 96):
        model = export.optimize_for_inference(_zoo("reactnet_18", size))
        counts.append(export.inspect_flatbuffer(export.export_tflite(model, fast=True)))
    assert counts[0] == counts[1]


@pytest.mark.parametrize("name", ["resnet20", "es_resnet20", "g_resnet20", "es_g_resnet20"])
def test_cifar_models_match_keras(name):
    model = models.get(name)
    _randomise_bn(model)
    fb = export.export_tflite(model, fast=True)
    x = np.random.default_rng(5).normal(size=(4, 32, 32, 3)).astype(np.float32)
    _assert_lce_matches(model, fb, x)


def test_imagenet_model_matches_keras():
    # 96x96 is the smallest size whose last maps (3x3) are not smaller than the kernel
    model = export.optimize_for_inference(models.get("es_reactnet_a", input_shape=(96, 96, 3)))
    _randomise_bn(model)
    fb = export.export_tflite(model, fast=True)
    assert export.check_export(model, fb).ok
    # 8 images: on one machine about half of them had a flip somewhere in the 31 binary layers
    x = np.random.default_rng(6).normal(size=(8, 96, 96, 3)).astype(np.float32)
    _assert_lce_matches(model, fb, x)


# ---------------------------------------------------------------- agreement


def _cifar_images(cifar10_dir, tmp_path, per_class=10):
    """Extract ``per_class`` test images of every class into ``tmp_path``."""
    counts = {}
    with tarfile.open(cifar10_dir / "test.tar.gz") as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3:
                continue
            if counts.get(parts[-2], 0) < per_class:
                counts[parts[-2]] = counts.get(parts[-2], 0) + 1
                archive.extract(member, tmp_path, filter="data")
    return next(p for p in tmp_path.rglob("*") if p.is_dir() and len(list(p.iterdir())) == len(counts))


def test_agreement_on_cifar10_images(cifar10_dir, tmp_path):
    folder = _cifar_images(cifar10_dir, tmp_path)
    images, labels, classes = export.load_images(folder, limit=100)
    assert images.shape == (100, 32, 32, 3) and len(classes) == 10
    assert np.bincount(labels).tolist() == [10] * 10
    model = models.get("resnet20")
    _randomise_bn(model)
    # BN statistics of the data itself (one pass with momentum 0), as training leaves them
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.0
    model(images, training=True)
    result = export.agreement(model, images, labels)
    assert result["n"] == 100
    assert result["top1_agreement"] >= 0.97, result
    # most images agree to float precision; the others had a near-zero pre-sign value
    assert result["exact_fraction"] >= 0.8, result
    assert result["max_abs_logit_diff"] > 0
    assert 0.0 <= result["keras_top1"] <= 1.0 and "lce_top1" in result


def test_agreement_rejects_bad_input():
    model = models.get("resnet20")
    with pytest.raises(ValueError, match="shape"):
        export.agreement(model, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="num_threads"):
        export.lce_interpreter(b"", num_threads=0)
    with pytest.raises(ValueError, match="TFL3"):
        export.inspect_flatbuffer(b"not a flatbuffer")


# ---------------------------------------------------------------------- CLI


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "r20.tflite"
    code = cli.main(["export", "resnet20", "--fast", "--pad-value", "1", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "LceBconv2d: 18 found, 18 expected -> OK" in text
    assert f"{out.stat().st_size} bytes" in text
    assert export.inspect_flatbuffer(out.read_bytes())["LceBconv2d"] == 18


def test_cli_export_bad_input(capsys, tmp_path):
    out = str(tmp_path / "x.tflite")
    assert cli.main(["export", "resnet20", "--input-size", "30", "-o", out]) == 2
    assert "30" in capsys.readouterr().err
    assert cli.main(["export", "resnet21", "-o", out]) == 2
    assert "resnet21" in capsys.readouterr().err


def test_cli_benchmark_json(capsys):
    import json

    code = cli.main(["benchmark", "resnet20", "--no-reference", "--runs", "3", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["model"] for r in rows] == ["resnet20"]
    assert rows[0]["min_ratio"] == 1.0 and rows[0]["bconv_ops"] == 18
    for r in rows:
        assert 0 < r["min_ms"] <= r["median_ms"] and r["size_bytes"] > 0
    with pytest.raises(ValueError, match="base"):
        export.benchmark(["resnet20"], references=False, base="quicknet", runs=1)
