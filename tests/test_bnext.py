"""BNext-T/S/M/L and ES-BNext-T (issue 14).

- parameter counts equal the released PyTorch definitions (spec bnext_binaryvit.md C),
  checked against the build and against an independent count from the spec's rules;
- BOPs / OPs of ``larq-esbnn summary`` against the spec's 4.817e9 / 0.886e8;
- import of self-made checkpoints in the released layout (names and shapes from
  ``shared/specs/torch_state_dicts``), compared with an independent PyTorch
  reference forward written from the spec (float64, eval semantics of the release);
- LCE export with every binary conv binary;
- the weight-temperature schedule and the released two-teacher distillation.

S / M / L (up to 327 M parameters) are counted from a graph-mode build, which
creates the variables without allocating or initialising their values.
"""

import json
import math
import pathlib

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_esbnn import blocks, cli, export, layers, models, report
from larq_esbnn.models.bnext import BNEXT_CHANNELS
from larq_esbnn.quantizers import temperature_binary_weight
from larq_esbnn.train import trainer

SPECS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "specs" / "torch_state_dicts"
RELEASED = {
    "bnext_t": 30_862_236,
    "es_bnext_t": 30_943_490,
    "bnext_s": 68_594_614,
    "bnext_m": 134_501_974,
    "bnext_l": 326_546_640,
}
SIZES = {"bnext_t": ("tiny", 1), "es_bnext_t": ("tiny", 2), "bnext_s": ("small", 1),
         "bnext_m": ("middle", 1), "bnext_l": ("large", 1)}
BINARY_WEIGHTS_T = 28_253_184  # spec C, both T models


def n_weights(ws):
    return int(sum(np.prod(w.shape.as_list()) for w in ws))


def independent_count(channels, tau=1, unused=True, classes=1000):
    """Trainable parameters from the spec's rules (A2, A3, B), not from the code.

    Returns (total, binary weights, number of units, BN channels)."""
    c0 = channels[0]
    total = 27 * c0 + 2 * c0 * tau + (c0 * tau if unused else 0)  # stem conv, BN, unused PReLU
    bn_channels = c0 * tau
    binary = units = 0
    for i in range(1, len(channels)):
        c, cout = channels[i - 1], channels[i]
        attention = i > 1 and i % 2 == 0
        for k, is_attention in [(3, attention)] + [(1, False)] * (1 if cout == c else 2):
            units += 1
            binary += k * k * (tau * c) * (c // tau)
            prelu1 = tau * c if (is_attention or unused) else 0
            total += tau * c * 7 + prelu1  # move, BN1, BN2 (4), PReLU2, lambda
            total += (tau * c) * (c // (8 * tau)) + c // (8 * tau)  # SE conv 1
            total += (tau * c // 8) * (c // tau) + c // tau  # SE conv 2
            bn_channels += 2 * tau * c
    head = channels[-1] + channels[-1] * classes + classes  # PReLU, fc
    return total + binary + head, binary, units, bn_channels


@pytest.fixture(scope="session")
def t_models():
    """The two T models at 224 (shared by the count and OPs tests)."""
    tf.keras.backend.clear_session()
    return {name: models.get(name) for name in ("bnext_t", "es_bnext_t")}


# ------------------------------------------------------------------ counts


@pytest.mark.parametrize("name", ["bnext_t", "es_bnext_t"])
def test_t_models_match_the_released_counts(t_models, name):
    model = t_models[name]
    size, tau = SIZES[name]
    total, binary, units, bn_channels = independent_count(BNEXT_CHANNELS[size], tau)
    assert n_weights(model.trainable_weights) == RELEASED[name] == total
    convs = [layer for layer in model.layers if isinstance(layer, layers.TemperatureBinaryConv2D)]
    assert len(convs) == units == 31
    assert sum(int(np.prod(c.kernel.shape)) for c in convs) == binary == BINARY_WEIGHTS_T
    # non-trainable: BN moving statistics and one temperature per binary conv (PyTorch buffers)
    assert n_weights(model.non_trainable_weights) == 2 * bn_channels + units
    unused = [w for layer in model.layers if isinstance(layer, layers.UnusedWeight) for w in layer.weights]
    assert n_weights(unused) == (8_960 if tau == 1 else 17_920)  # spec F
    assert model.output_shape == (None, 1000)


def graph_counts(name, **kwargs):
    """(trainable, non-trainable) of a graph-mode build: no values are allocated."""
    with tf.Graph().as_default():
        model = models.get(name, input_shape=(64, 64, 3), **kwargs)
        return n_weights(model.trainable_weights), n_weights(model.non_trainable_weights)


@pytest.mark.parametrize("name", ["bnext_s", "bnext_m", "bnext_l"])
def test_larger_sizes_match_the_released_counts(name):
    size, tau = SIZES[name]
    total, _, units, bn_channels = independent_count(BNEXT_CHANNELS[size], tau)
    trainable, non_trainable = graph_counts(name)
    assert trainable == RELEASED[name] == total
    assert non_trainable == 2 * bn_channels + units


def test_unused_weights_can_be_dropped(t_models):
    full = n_weights(t_models["es_bnext_t"].trainable_weights)
    lean, _ = graph_counts("es_bnext_t", unused_weights=False)
    assert full - lean == 17_920
    assert lean == independent_count(BNEXT_CHANNELS["tiny"], 2, unused=False)[0]


def test_registry_and_arguments():
    assert models.names("*bnext*") == ["bnext_l", "bnext_m", "bnext_s", "bnext_t", "es_bnext_t"]
    assert models.entry("es_bnext_t").defaults == {"size": "tiny", "tau": 2}
    with pytest.raises(TypeError):
        models.bnext_t((64, 64, 3))
    with pytest.raises(ValueError, match="tau=3 must divide C/8 of every width"):
        models.bnext_t(tau=3, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="size must be one of tiny, small, middle, large, got 'huge'"):
        models.get("bnext_t", size="huge")
    with pytest.raises(ValueError, match="input height 48 is not allowed.*multiple of 32"):
        models.bnext_t(input_shape=(48, 48, 3))


def test_small_build_runs_trains_and_round_trips(tmp_path):
    model = models.es_bnext_t(input_shape=(32, 32, 3), num_classes=5, include_top=True)
    assert model.get_layer("b1_u3_conv").kernel.shape == (3, 3, 64, 16)
    assert model.get_layer("b1_u3_se2").kernel.shape == (1, 1, 8, 16)
    assert model.get_layer("head_fc").kernel.shape == (1024, 5)
    x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
    y = model(x, training=False).numpy()
    model.save(tmp_path / "m.h5")
    again = tf.keras.models.load_model(tmp_path / "m.h5")
    np.testing.assert_array_equal(again(x, training=False).numpy(), y)
    # the unused weights get no gradient; everything on the main path does
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) ** 2)
    grads = dict(zip([w.name for w in model.trainable_weights], tape.gradient(loss, model.trainable_weights)))
    unused = {w.name for layer in model.layers if isinstance(layer, layers.UnusedWeight) for w in layer.weights}
    assert unused and all(grads[n] is None for n in unused)
    assert all(g is not None for n, g in grads.items() if n not in unused)


# -------------------------------------------------------------------- OPs


@pytest.mark.parametrize("name", ["bnext_t", "es_bnext_t"])
def test_summary_bops_and_ops(t_models, name):
    s = report.summary(t_models[name], print_fn=None, larq_summary=False)
    assert s["bops"] == pytest.approx(4.817e9, rel=0.02)
    assert s["ops"] == pytest.approx(0.886e8, rel=0.02)
    assert s["binary_params"] == BINARY_WEIGHTS_T
    assert s["params"] == RELEASED[name] and not s["unknown_layers"]


def test_summary_cli(capsys):
    assert cli.main(["summary", "es_bnext_t", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["bops"] == pytest.approx(4.817e9, rel=0.02)
    assert s["ops"] == pytest.approx(0.886e8, rel=0.02)


# ------------------------------------------------------------ quantizers


def test_temperature_binary_weight():
    w = tf.constant([-2.0, -0.3, 0.0, 0.05, 0.7, 1.4])
    with tf.GradientTape() as tape:
        tape.watch(w)
        soft = temperature_binary_weight(w, tf.constant(0.5))
    np.testing.assert_allclose(soft.numpy(), np.clip(w.numpy() / 0.5, -1, 1))
    np.testing.assert_array_equal(tape.gradient(soft, w).numpy(), np.ones(6))  # straight through, no mask
    hard = temperature_binary_weight(w, tf.constant(0.9 ** 153))  # < 1e-7: sign, sign(0) = +1
    np.testing.assert_array_equal(hard.numpy(), [-1, -1, 1, 1, 1, 1])
    t = np.float32(0.9 ** 152)  # > 1e-7: still clip(W / T), so W = 0 gives 0, not +1
    near = temperature_binary_weight(w, tf.constant(t))
    np.testing.assert_array_equal(near.numpy(), np.clip(w.numpy() / t, -1, 1))
    assert near.numpy()[2] == 0 and 0.9 ** 152 > 1e-7 > 0.9 ** 153


# ---------------------------------------------------------------- torch import


torch = pytest.importorskip("torch")
F = torch.nn.functional


def released(name):
    path = SPECS / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())


def random_state_dict(shapes, seed, temperature):
    """Random tensors with the released names / shapes; lambda partly outside [0, 1]
    so that the release's clamp (FFN_1x1 only) matters."""
    g = torch.Generator().manual_seed(seed)

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    sd = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(1000)
        elif name.endswith("binary_conv.temperature"):
            sd[name] = torch.tensor([temperature])
        elif name.endswith("binary_activation.temperature"):
            sd[name] = uniform(shape, 0.1, 1.0)  # never changes the sign
        elif name.endswith("running_var"):
            sd[name] = uniform(shape, 0.5, 2.0)
        elif name.endswith("running_mean"):
            sd[name] = 0.5 * torch.randn(shape, generator=g)
        elif name.endswith(".scale"):
            sd[name] = uniform(shape, -0.2, 1.2)
        elif "activation" in name or "prelu" in name:
            sd[name] = uniform(shape, 0.0, 0.5)
        elif len(shape) == 1 and name.endswith(".weight"):  # BN gamma
            sd[name] = uniform(shape, 0.5, 1.5)
        elif name.endswith(".bias"):
            sd[name] = 0.2 * torch.randn(shape, generator=g)
        else:
            w = torch.randn(shape, generator=g)
            w = torch.where(w == 0, torch.full_like(w, 0.5), w)
            sd[name] = w / math.sqrt(math.prod(shape[1:]))
    return sd


class Reference:
    """The released BNext / ES-BNext (``bnext.py`` / ``bnext_rep_ops.py``) in eval mode,
    written from the spec as functions over a state dict (float64)."""

    def __init__(self, sd, channels, tau):
        self.sd = {k: (v.double() if v.is_floating_point() else v) for k, v in sd.items()}
        self.channels, self.tau = channels, tau
        self.min_presign = math.inf

    def bn(self, x, p):
        s = self.sd
        return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"],
                            s[p + ".bias"], training=False, eps=1e-5)

    def se(self, m, p):
        s, rep = self.sd, self.tau * self.tau
        z = m.mean(dim=(2, 3), keepdim=True)
        z = F.relu(F.conv2d(z, s[p + "se.se.1.weight"], s[p + "se.se.1.bias"]).repeat(1, rep, 1, 1))
        q = p + ("se.se.3" if self.tau == 1 else "se.se.4")  # ES: a tile module sits at index 3
        return torch.sigmoid(F.conv2d(z, s[q + ".weight"], s[q + ".bias"]).repeat(1, rep, 1, 1))

    def unit(self, x, p, attention, k, stride, clamp_scale):
        s = self.sd

        def pool(t):
            return F.avg_pool2d(t, 2) if stride == 2 else t

        if attention:
            residual = pool(F.prelu(x, s[p + "activation1.weight"]))
        t = x + s[p + "move.bias"]
        self.min_presign = min(self.min_presign, t.abs().min().item())
        w, temp = s[p + "binary_conv.weight"], s[p + "binary_conv.temperature"]
        wq = torch.sign(w) if temp.item() < 1e-7 else (w / temp.clamp(min=1e-8)).clamp(-1, 1)
        y = F.conv2d(torch.sign(t), wq, stride=stride, padding=k // 2).repeat(1, self.tau ** 2, 1, 1)
        y = F.prelu(self.bn(y, p + "norm1"), s[p + "activation2.weight"])
        lam = s[p + "scale"].clamp(0, 1) if clamp_scale else s[p + "scale"]
        y = self.se(lam * pool(x) + (1 - lam) * y, p) * y
        if attention:
            return self.bn(y * residual, p + "norm2") + residual
        return self.bn(y, p + "norm2") + pool(x)

    def __call__(self, x):
        s, ch = self.sd, self.channels
        x = F.conv2d(x, s["feature.0.conv1.weight"], stride=2, padding=1).repeat(1, self.tau, 1, 1)
        x = self.bn(x, "feature.0.bn1")
        for i in range(1, len(ch)):
            stride = 2 if ch[i] != ch[i - 1] and i > 1 else 1
            x = self.unit(x, f"feature.{i}.Attention.", i > 1 and i % 2 == 0, 3, stride, False)
            if ch[i] == ch[i - 1]:
                x = self.unit(x, f"feature.{i}.FFN.", False, 1, 1, True)
            else:
                x = torch.cat([self.unit(x, f"feature.{i}.FFN_{j}.", False, 1, 1, True) for j in (1, 2)], 1)
        x = F.prelu(x[:, : ch[-1]], s["prelu.weight"])
        return x.mean(dim=(2, 3)) @ s["fc.weight"].T + s["fc.bias"]


def compare(label, model, ref, size=64):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        expected = ref(x).numpy()
    got = model(x.permute(0, 2, 3, 1).numpy(), training=False).numpy()
    diff, scale = float(np.abs(got - expected).max()), float(np.abs(expected).max())
    print(f"\n{label}: max abs diff {diff:.3e}, largest |logit| {scale:.3e}, "
          f"smallest |pre-sign| {ref.min_presign:.2e}")
    assert ref.min_presign > 1e-9  # far from float64 rounding: no sign can flip
    assert got.shape == expected.shape
    assert diff < 1e-6 * scale


@pytest.mark.parametrize("model_name,tau,block,attention,strides", [
    ("bnext_t", 1, 2, True, 2),  # ELM attention at stride 2, two FFN_1x1 concatenated
    ("bnext_t", 1, 3, False, 1),  # FFN_3x3 (lambda not clamped) + one FFN_1x1
    ("es_bnext_t", 2, 2, True, 2),  # the ES form: tiled convs and SE, se.se.4
])
def test_import_one_block_matches_the_reference(float64, model_name, tau, block, attention, strides):
    """One block of the released layout: import its tensors into a Keras block and
    compare with the reference forward of the same tensors (fast, every unit kind)."""
    from larq_esbnn.torch_import import import_state_dict

    shapes = {k: v for k, v in released(model_name)["state_dict"].items() if k.startswith(f"feature.{block}.")}
    sd = random_state_dict(shapes, seed=10 + block + tau, temperature=0.9 ** 200)
    ch = BNEXT_CHANNELS["tiny"]
    cin, cout = ch[block - 1], ch[block]
    inp = tf.keras.Input((8, 8, cin * tau))
    out = blocks.bnext_block(inp, cout, strides, attention, blocks.BlockConfig(tau=tau), f"b{block}")
    model = tf.keras.Model(inp, out)
    assert import_state_dict(model, model_name, {k: v.numpy() for k, v in sd.items()}).unused == []
    ref = Reference(sd, ch, tau)
    x = torch.randn(2, cin * tau, 8, 8, generator=torch.Generator().manual_seed(block), dtype=torch.float64)
    p = f"feature.{block}."
    with torch.no_grad():
        y = ref.unit(x, p + "Attention.", attention, 3, strides, False)
        if cin == cout:
            y = ref.unit(y, p + "FFN.", False, 1, 1, True)
        else:
            y = torch.cat([ref.unit(y, p + f"FFN_{j}.", False, 1, 1, True) for j in (1, 2)], 1)
    expected = y.permute(0, 2, 3, 1).numpy()
    got = model(x.permute(0, 2, 3, 1).numpy(), training=False).numpy()
    assert ref.min_presign > 1e-9
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


@pytest.mark.slow
def test_import_annealed_bnext_t_via_cli(tmp_path, capsys):
    spec = released("bnext_t")
    sd = random_state_dict(spec["state_dict"], seed=1, temperature=0.9 ** 200)
    path = tmp_path / "bnext_t.pth.tar"
    torch.save({"epoch": 511, "best_top1_acc": 0.0, "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    out = tmp_path / "bnext_t.h5"
    assert cli.main(["import-torch", "bnext_t", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "0 unused" in printed.out and "temperature" not in printed.err
    tf.keras.backend.clear_session()
    tf.keras.backend.set_floatx("float64")
    try:
        model = models.bnext_t(input_shape=(64, 64, 3), weights=str(out))
        assert n_weights(model.trainable_weights) == spec["params"]
        temps = {float(layer.temperature.numpy()) for layer in model.layers
                 if isinstance(layer, layers.TemperatureBinaryConv2D)}
        assert temps == {float(np.float32(0.9 ** 200))}
        with capsys.disabled():
            compare("bnext_t (annealed, binary)", model, Reference(sd, BNEXT_CHANNELS["tiny"], 1))
    finally:
        tf.keras.backend.set_floatx("float32")


@pytest.mark.slow
def test_import_es_bnext_t_with_unannealed_temperature(float64, capsys):
    """The released ES script never lowers T (spec B): such a checkpoint holds real
    weights clip(W, -1, 1); it converts with a warning and computes the same outputs."""
    from larq_esbnn.torch_import import CheckpointError, convert_checkpoint

    spec = released("es_bnext_t")
    sd = random_state_dict(spec["state_dict"], seed=2, temperature=1.0)
    model, _ = convert_checkpoint("es_bnext_t", sd, input_shape=(64, 64, 3))
    err = capsys.readouterr().err
    assert "31 of 31 binary convs have a weight temperature T >= 1e-7" in err
    assert "Converted as such" in err
    assert n_weights(model.trainable_weights) == spec["params"]
    with capsys.disabled():
        compare("es_bnext_t (T = 1, real weights)", model, Reference(sd, BNEXT_CHANNELS["tiny"], 2))
    with pytest.raises(CheckpointError, match="Refused \\(require_binary=True\\)"):
        convert_checkpoint("es_bnext_t", sd, input_shape=(64, 64, 3), require_binary=True)


def test_import_errors_name_the_tensor():
    from larq_esbnn.torch_import import CheckpointError, import_state_dict

    sd = {k: v.numpy() for k, v in random_state_dict(released("bnext_t")["state_dict"], 3, 1e-9).items()}
    model = models.bnext_t(input_shape=(32, 32, 3))
    missing = dict(sd)
    del missing["feature.4.FFN_2.se.se.3.weight"]
    with pytest.raises(CheckpointError, match=r"'feature\.4\.FFN_2\.se\.se\.3\.weight'.*b4_ffn2_se2"):
        import_state_dict(model, "bnext_t", missing)
    assert import_state_dict(model, "bnext_t", sd).unused == []
    # lambda: clamped where the release clamps in eval (FFN_1x1), kept elsewhere
    np.testing.assert_array_equal(model.get_layer("b3_ffn_recouple").scale.numpy(),
                                  np.clip(sd["feature.3.FFN.scale"].reshape(-1), 0, 1))
    np.testing.assert_array_equal(model.get_layer("b3_u3_recouple").scale.numpy(),
                                  sd["feature.3.Attention.scale"].reshape(-1))
    np.testing.assert_array_equal(model.get_layer("stem_prelu").alpha.numpy(), sd["feature.0.prelu.weight"])


# ------------------------------------------------------------------- export


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bnext_t", "es_bnext_t"])
def test_lce_export_every_binary_conv_binary(name):
    model = export.optimize_for_inference(models.get(name, input_shape=(32, 32, 3)))
    check = export.check_export(model, export.export_tflite(model, fast=True))
    assert check.expected == 31 and check.ok, check.format()
    assert not check.float_by_design


def _bnext_block_model(tau, temperature=0.0, size=8):
    cfg = blocks.BlockConfig(tau=tau)
    inp = tf.keras.Input((size, size, 16 * tau))
    out = blocks.bnext_block(inp, 32, 2, True, cfg, "b2", temperature=temperature)
    return tf.keras.Model(inp, out)


def _randomise(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c),
                               rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)])
        elif isinstance(layer, (layers.LearnableBias, tf.keras.layers.PReLU)):
            layer.set_weights([rng.normal(0, 0.2, w.shape) for w in layer.get_weights()])


@pytest.mark.parametrize("tau", [1, 2])
def test_lce_matches_keras_on_a_downsampling_block(tau):
    model = _bnext_block_model(tau)
    _randomise(model)
    fb = export.export_tflite(model, fast=True)
    check = export.check_export(model, fb)
    assert check.ok and check.found == 3, check.format()
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 16 * tau)).astype(np.float32)
    y, z = model(x, training=False).numpy(), export.lce_predict(fb, x)
    assert np.median(np.abs(y - z)) < 1e-4 and np.abs(y - z).max() < 0.05 * np.abs(y).max()


def test_unannealed_temperature_is_reported_as_float_fallback():
    model = _bnext_block_model(1, temperature=1.0)
    check = export.check_export(model, export.export_tflite(model, fast=True))
    assert not check.ok and check.found == 0 and len(check.fallbacks) == 3


# ----------------------------------------------------------------- training


def test_temperature_schedule_and_weight_clip():
    model = _bnext_block_model(1, size=4)
    head = tf.keras.Sequential([model, tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(3)])
    schedule = trainer.WeightTemperatureSchedule(head, start=1.0, decay=0.9, epoch_offset=2)
    assert len(schedule.layers) == 3
    bnn = trainer.BNNTrainer(head, label_smoothing=0.0)
    bnn.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=0.01))
    rng = np.random.default_rng(0)
    for layer in schedule.layers:  # latent weights outside the clamp: the update's constraint must pull them in
        layer.kernel.latent_variable.assign(rng.uniform(-3, 3, layer.kernel.shape).astype(np.float32))
    x = rng.normal(size=(8, 4, 4, 16)).astype(np.float32)
    y = tf.one_hot(rng.integers(0, 3, 8), 3)
    history = bnn.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[schedule])
    np.testing.assert_allclose(history.history["weight_temperature"], [0.81, 0.729, 0.6561], rtol=1e-6)
    for layer in schedule.layers:
        assert float(layer.temperature.numpy()) == pytest.approx(0.6561)
        kernel = layer.kernel.latent_variable.numpy()
        assert np.isfinite(kernel).all() and np.abs(kernel).max() <= 1.5  # the release's clamp, as a constraint
        assert np.abs(kernel).max() == pytest.approx(1.5)  # values beyond it were clipped, not shrunk
    # the forward pass uses clip(W / T, -1, 1) at the current T
    conv = schedule.layers[0]
    with lq.context.quantized_scope(True):
        q = tf.convert_to_tensor(conv.kernel).numpy()
    np.testing.assert_allclose(q, np.clip(conv.kernel.latent_variable.numpy() / 0.6561, -1, 1), rtol=1e-6)


def test_two_teacher_distillation_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    student = tf.keras.Sequential([tf.keras.Input((5,)), tf.keras.layers.Dense(4)])
    teachers = [tf.keras.Sequential([tf.keras.Input((5,)), tf.keras.layers.Dense(4)]) for _ in range(2)]
    mt = trainer.MultiTeacherTrainer(student, teachers)
    per_example, logits = mt._loss_terms(x, None, False)
    s = student(x).numpy()
    log_p = s - np.log(np.exp(s).sum(-1, keepdims=True))
    ce = np.stack([-(tf.nn.softmax(t(x)).numpy() * log_p).sum(-1) for t in teachers], -1)
    alpha = np.exp(ce) / np.exp(ce).sum(-1, keepdims=True)
    expected = (ce.mean(0) * alpha).mean(-1)
    np.testing.assert_allclose(per_example.numpy(), expected, rtol=1e-5)
    # alpha carries no gradient: the gradient equals that of (1/K) sum_k ce_k(batch) * mean alpha_k
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(mt._loss_terms(x, None, True)[0])
    g = tape.gradient(loss, student.trainable_variables)
    a = tf.constant(alpha.mean(0), tf.float32)
    with tf.GradientTape() as tape:
        lp = tf.nn.log_softmax(student(x))
        ref = tf.add_n([a[k] * tf.reduce_mean(-tf.reduce_sum(tf.nn.softmax(t(x)) * lp, -1))
                        for k, t in enumerate(teachers)]) / 2
    for a_, b_ in zip(g, tape.gradient(ref, student.trainable_variables)):
        np.testing.assert_allclose(a_.numpy(), b_.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="at least two teachers"):
        trainer.MultiTeacherTrainer(student, teachers[:1])


def test_keras_application_teacher_undoes_the_normalisation():
    from larq_esbnn.train import data as data_lib

    teacher = trainer.keras_application_teacher("MobileNetV2", (32, 32, 3), weights=None)
    raw = teacher.get_layer("undo_normalize")
    x = data_lib.normalize(np.full((1, 32, 32, 3), 200.0, np.float32))
    np.testing.assert_allclose(raw(x).numpy(), 200.0, rtol=1e-5)
    assert teacher.output_shape == (None, 1000)
    with pytest.raises(ValueError, match="no model 'EfficientNetB99'"):
        trainer.keras_application_teacher("EfficientNetB99", (32, 32, 3), weights=None)


def test_bnext_recipe_loads():
    from larq_esbnn.train.recipe import Recipe

    path = pathlib.Path(__file__).resolve().parents[1] / "training" / "bnext_t_imagenet.toml"
    recipe = Recipe.load(path)
    assert recipe.teachers == ["keras:EfficientNetB0", "keras:EfficientNetB2"] and not recipe.teacher
    assert (recipe.weight_temperature_start, recipe.weight_temperature_decay) == (1.0, 0.9)
    assert '"weight_temperature_decay": 0.9' in recipe.to_json()
    with pytest.raises(ValueError, match="teachers needs at least two entries"):
        Recipe.from_dict({"model": "bnext_t", "data": "x", "teachers": ["a"], "steps": [{"epochs": 1, "lr": 1e-3}]})
