"""Operation / parameter / capacity reports (issue 4)."""

import itertools
import json

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import larq_esbnn
from larq_esbnn import blocks, cli, models, report
from larq_esbnn.layers import BinaryConv2D

layers = tf.keras.layers


@pytest.fixture(scope="module")
def zoo():
    """Build each registered model once per module (default input size)."""
    cache = {}

    def get(name, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = models.get(name, **kwargs)
        return cache[key]

    return get


def _within(value, printed, unit):
    """``value`` matches a figure printed as ``printed`` (last digit ``unit``) within 2 %."""
    lo, hi = (printed - unit / 2) * 0.98, (printed + unit / 2) * 1.02
    return lo <= value <= hi


def test_summary_is_reexported():
    assert larq_esbnn.summary is report.summary


# BCDNet Table 1 (main figures): BOPs x1e9, FLOPs x1e8, OPs x1e8
TABLE_1 = {
    "reactnet_a": (4.82, 0.12, 0.87),
    "bcdnet_a": (4.82, 0.12, 0.87),
    "bcdnet_b": (4.82, 0.14, 0.89),
}
# the same table's second figures (more real-valued work counted): FLOPs, OPs x1e8
TABLE_1_EXTENDED = {
    "reactnet_a": (0.31, 1.06),
    "bcdnet_a": (0.32, 1.08),
    "bcdnet_b": (0.34, 1.09),
}


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_table_1_default_convention(zoo, name):
    s = report.summary(zoo(name), print_fn=None, larq_summary=False)
    bops, flops, ops = TABLE_1[name]
    assert _within(s["bops"], bops * 1e9, 0.01e9), s["bops"]
    assert _within(s["flops"], flops * 1e8, 0.01e8), s["flops"]
    assert _within(s["ops"], ops * 1e8, 0.01e8), s["ops"]
    assert s["ops"] == pytest.approx(s["bops"] / 64 + s["flops"])
    assert s["unknown_layers"] == []


@pytest.mark.parametrize("name", sorted(TABLE_1_EXTENDED))
def test_table_1_paper_extended_convention(zoo, name):
    s = report.summary(zoo(name), print_fn=None, convention="paper-extended", larq_summary=False)
    flops, ops = TABLE_1_EXTENDED[name]
    assert _within(s["flops"], flops * 1e8, 0.01e8), s["flops"]
    assert _within(s["ops"], ops * 1e8, 0.01e8), s["ops"]
    assert s["bops"] == report.summary(zoo(name), print_fn=None, larq_summary=False)["bops"]


def test_reactnet_a_matches_larq_profiler(zoo):
    """Where larq can count (stock conv / dense), both counters agree exactly."""
    s = report.summary(zoo("reactnet_a"), print_fn=None)
    assert s["bops"] == s["larq"]["binary_macs"]
    assert s["flops"] == s["larq"]["real_macs"]
    assert s["params"] == zoo("reactnet_a").count_params() - s["non_trainable_params"]


def test_bcdnet_heads_fold_into_one(zoo):
    model = zoo("bcdnet_a")
    folded = report.summary(model, print_fn=None)
    both = report.summary(model, print_fn=None, fold_heads=False)
    dist = model.get_layer("head_fc_dist")
    assert both["flops"] - folded["flops"] == int(np.prod(dist.kernel.shape))
    assert both["flops"] == folded["larq"]["real_macs"]  # larq counts both heads
    assert both["params"] == folded["params"]  # the second head is still stored
    row = next(r for r in folded["layers"] if r["name"] == "head_fc_dist")
    assert row["flops"] == 0 and "folded" in row["note"]


def test_es_keeps_bops_of_reactnet_a(zoo):
    base = report.summary(zoo("reactnet_a"), print_fn=None, larq_summary=False)
    es = report.summary(zoo("es_reactnet_a"), print_fn=None, larq_summary=False)
    assert es["bops"] == base["bops"]
    assert es["binary_params"] == base["binary_params"]
    # ES widens the real-valued head input and stream: more FLOPs in both conventions
    assert es["flops"] > base["flops"]
    ext = [
        report.summary(zoo(n), print_fn=None, convention="paper-extended", larq_summary=False)
        for n in ("reactnet_a", "es_reactnet_a")
    ]
    assert ext[1]["flops"] - es["flops"] > ext[0]["flops"] - base["flops"]


def test_resnet20_family_keeps_bops(zoo):
    ref = report.summary(zoo("resnet20"), print_fn=None, larq_summary=False)
    # 18 binary 3x3 convs; recompute the binary MACs from the layer shapes
    model = zoo("resnet20")
    expected = sum(
        int(np.prod(layer.kernel.shape)) * int(np.prod(layer.output_shape[1:3]))
        for layer in model.layers
        if isinstance(layer, BinaryConv2D)
    )
    assert ref["bops"] == expected > 0
    for name in ("es_resnet20", "g_resnet20", "es_g_resnet20"):
        s = report.summary(zoo(name), print_fn=None, larq_summary=False)
        assert s["bops"] == ref["bops"], name
        assert s["binary_params"] == ref["binary_params"], name
        assert s["flops"] > ref["flops"], name  # wider real shortcuts and head


def test_memory_and_parameter_columns(zoo):
    model = zoo("resnet20")
    s = report.summary(model, print_fn=None)
    n_binary = sum(
        int(np.prod(w.shape)) for w in model.weights if getattr(w, "precision", None) == 1
    )
    n_all = sum(int(np.prod(w.shape)) for w in model.weights)
    assert s["binary_params"] == n_binary > 0
    assert s["total_params"] == n_all
    assert s["params"] == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert s["memory_bytes"] == int(np.ceil((n_binary + 32 * (n_all - n_binary)) / 8))


def test_step_one_counts_real_weight_convs_as_flops(zoo):
    binary = report.summary(zoo("resnet20"), print_fn=None, larq_summary=False)
    step1 = report.summary(
        zoo("resnet20", binary_weights=False), print_fn=None, larq_summary=False
    )
    assert step1["bops"] == 0 and step1["binary_params"] == 0
    assert step1["flops"] == binary["flops"] + binary["bops"]


def test_printed_table_has_every_layer_and_larq_summary(zoo):
    lines = []
    model = zoo("resnet20")
    report.summary(model, print_fn=lines.append)
    text = "\n".join(lines)
    for layer in model.layers:
        assert layer.name in text
    assert "OPs = BOPs/64 + FLOPs" in text
    assert "larq.models.summary" in text and "Total params" in text


def _mlp_model(shift_padding):
    cfg = blocks.BlockConfig(shift_padding=shift_padding)
    x = tf.keras.Input((4, 4, 32))
    return tf.keras.Model(x, blocks.mlp_block(x, cfg, "mlp0"))


def test_zero_padding_shift_mode_counts_binary():
    """In the zero mode the sign comes first and the conv has no input quantizer."""
    zero, circular = _mlp_model("zero"), _mlp_model("circular")
    assert zero.get_layer("mlp0_short").input_quantizer is None
    s_zero = report.summary(zero, print_fn=None)
    s_circ = report.summary(circular, print_fn=None)
    expected = 3 * 32 * 32 * 4 * 4  # three token-wise 1x1 convs C -> C on 4x4
    assert s_zero["bops"] == s_circ["bops"] == expected
    assert s_zero["flops"] == s_circ["flops"] == 0


def test_keras_and_larq_layers_agree_with_larq_profiler():
    x = tf.keras.Input((8, 8, 4))
    y = lq.layers.QuantDepthwiseConv2D(
        3, padding="same", input_quantizer="ste_sign", depthwise_quantizer="ste_sign",
        depthwise_constraint="weight_clip",
    )(x)
    y = layers.DepthwiseConv2D(3, depth_multiplier=2)(y)
    y = lq.layers.QuantConv2D(
        6, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip"
    )(y)
    y = layers.Conv2D(5, 1, strides=2)(y)
    y = layers.Flatten()(y)
    y = lq.layers.QuantDense(
        7, input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip"
    )(y)
    y = layers.Dense(3)(y)
    model = tf.keras.Model(x, y)
    s = report.summary(model, print_fn=None)
    assert s["bops"] == s["larq"]["binary_macs"] > 0
    assert s["flops"] == s["larq"]["real_macs"] > 0
    rows = {r["type"]: r for r in s["layers"]}
    assert rows["QuantDepthwiseConv2D"]["bops"] == 3 * 3 * 4 * 8 * 8


def test_unknown_layer_raises_or_is_reported():
    x = tf.keras.Input((4, 4, 2))
    y = layers.Lambda(lambda t: 2.0 * t, name="double")(x)
    y = layers.Conv2D(3, 1, name="conv")(y)
    model = tf.keras.Model(x, y)
    with pytest.raises(ValueError, match="Lambda"):
        report.summary(model, print_fn=None)
    s = report.summary(model, print_fn=None, on_unknown="report", larq_summary=False)
    assert s["unknown_layers"] == ["double"]
    row = next(r for r in s["layers"] if r["name"] == "double")
    assert row["bops"] is None and row["flops"] is None and "unknown" in row["note"]
    assert s["flops"] == 2 * 3 * 16


def test_bad_arguments_are_named(zoo):
    with pytest.raises(ValueError, match="convention.*'nope'"):
        report.summary(zoo("resnet20"), print_fn=None, convention="nope")
    with pytest.raises(ValueError, match="on_unknown"):
        report.summary(zoo("resnet20"), print_fn=None, on_unknown="skip")


# ----------------------------------------------------------------------------- capacity


def _conv_probe(in_channels, kernel, filters=3):
    """A model holding one binary conv with +-1 kernel (so the scale alpha is 1)."""
    x = tf.keras.Input((kernel, kernel, in_channels))
    conv = BinaryConv2D(filters, kernel, name="probe")
    model = tf.keras.Model(x, conv(x))
    rng = np.random.default_rng(1)
    conv.set_weights([rng.choice([-1.0, 1.0], size=conv.kernel.shape)])
    return model


def test_capacity_formula_exhaustive():
    """All 2^18 +-1 input patches of a 3x3 conv over 2 channels: 19 values per output."""
    in_channels, k = 2, 3
    model = _conv_probe(in_channels, k)
    n = in_channels * k * k
    patches = np.array(list(itertools.product([-1.0, 1.0], repeat=n)), np.float32)
    patches = patches.reshape(-1, k, k, in_channels)
    out = model.predict(patches, batch_size=8192, verbose=0)[:, k // 2, k // 2, :]
    (row,) = report.capacity(model)
    assert row["terms"] == n and row["in_channels"] == in_channels
    for c in range(out.shape[-1]):
        values = np.unique(np.rint(out[:, c]).astype(int))
        assert len(values) == row["values"]
        assert values.tolist() == list(range(-n, n + 1, 2))


def test_capacity_formula_sampled_with_es():
    """Random +-1 tokens through a 1x1 ES branch (stream C tau -> C / tau): C tau + 1 values."""
    counts = {}
    for tau in (1, 2):
        cfg = blocks.BlockConfig(tau=tau)
        x = tf.keras.Input((16, 16, 4 * tau))
        y = blocks.binary_branch(x, 4, 1, 1, cfg, "probe")
        model = tf.keras.Model(x, y)
        conv = model.get_layer("probe")
        rng = np.random.default_rng(tau)
        conv.set_weights([rng.choice([-1.0, 1.0], size=conv.kernel.shape)])
        probe = tf.keras.Model(x, conv.output)
        inputs = rng.choice([-1.0, 1.0], size=(64, 16, 16, 4 * tau)).astype(np.float32)
        out = probe.predict(inputs, verbose=0)
        (row,) = report.capacity(model)
        counts[tau] = row["values"]
        for c in range(out.shape[-1]):
            assert len(np.unique(np.rint(out[..., c]))) == row["values"]
    assert counts == {1: 4 + 1, 2: 4 * 2 + 1}


def test_capacity_reactnet_a_vs_es(zoo):
    base = report.capacity(zoo("reactnet_a"))
    es = report.capacity(zoo("es_reactnet_a"))
    assert [r["layer"] for r in base] == [r["layer"] for r in es]
    assert len(base) == 13 + 13 + 5  # conv1 per block, conv2 or conv2a/b
    model = zoo("reactnet_a")
    for b, e in zip(base, es):
        layer = model.get_layer(b["layer"])
        k = layer.kernel_size[0] * layer.kernel_size[1]
        assert b["values"] == layer.input_shape[-1] * k + 1
        assert e["values"] - 1 == 2 * (b["values"] - 1)


def test_capacity_group_convs_per_group(zoo):
    rows = report.capacity(zoo("es_g_resnet20"))
    model = zoo("es_g_resnet20")
    first = rows[0]
    assert first["layer"] == "l0_conv_g0" and first["logical"] == "l0_conv"
    # stream 16 tau g = 64 split into 2 groups: each conv sums 32 * 9 products
    assert first["in_channels"] == model.get_layer("l0_conv_g0").input_shape[-1] == 32
    assert first["values"] == 32 * 9 + 1


# ----------------------------------------------------------------------------- CLI


def test_cli_summary_json(zoo, capsys):
    assert cli.main(["summary", "resnet20", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    ref = report.summary(zoo("resnet20"), print_fn=None)
    for key in ("params", "non_trainable_params", "binary_params", "bops", "flops", "ops", "memory_bytes"):
        assert data[key] == ref[key], key


def test_cli_summary_bad_model(capsys):
    assert cli.main(["summary", "no_such_net", "--json"]) == 2
    assert "no_such_net" in capsys.readouterr().err


@pytest.fixture
def cached_build(zoo, monkeypatch):
    """Let the capacity / models commands reuse the module's models (building is slow)."""
    monkeypatch.setattr(report, "_build", lambda name, input_size=None, weights=None: zoo(name))


def test_cli_capacity_compare_and_plot(tmp_path, capsys, cached_build):
    png = tmp_path / "cap.png"
    assert cli.main(["capacity", "resnet20", "--compare", "es_resnet20", "--plot", str(png), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    base, es = data["models"]["resnet20"], data["models"]["es_resnet20"]
    assert len(base) == len(es) == 18
    assert all(e["values"] - 1 == 2 * (b["values"] - 1) for b, e in zip(base, es))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["capacity", "resnet20"]) == 0
    table = capsys.readouterr().out
    assert "l0_conv" in table and str(16 * 9 + 1) in table


def test_cli_models_lists_pattern(capsys, cached_build):
    assert cli.main(["models", "*resnet20", "--json", "--count"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == models.names("*resnet20")
    # the classifiers share their binary convs; (es_)ssd_resnet20 add a detection head
    assert len({r["bops"] for r in rows if models.entry(r["name"]).task == "classification"}) == 1
    assert cli.main(["models", "resnet20"]) == 0
    text = capsys.readouterr().out
    assert models.entry("resnet20").description in text
    assert cli.main(["models", "nothing_like_this*"]) == 2


def test_nested_model_layers_are_counted():
    inner = tf.keras.Sequential([layers.Conv2D(4, 3, padding="same", name="c")], name="inner")
    x = tf.keras.Input((6, 6, 2))
    model = tf.keras.Model(x, layers.Dense(3, name="d")(inner(x)))
    s = report.summary(model, print_fn=None, larq_summary=False)
    assert "inner/c" in [r["name"] for r in s["layers"]]
    assert s["flops"] == 3 * 3 * 2 * 4 * 36 + 4 * 3 * 36
