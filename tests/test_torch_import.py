"""Import of the released PyTorch checkpoints, checked against an independent PyTorch forward.

The reference below is written from the spec (architectures.md sections 1-5)
as plain functions over a state dict with the released tensor names; random
state dicts are built from the name / shape lists in
``shared/specs/torch_state_dicts``. Both sides run in float64 so that no
pre-sign value sits within rounding of zero (the smallest |pre-sign| value is
measured and asserted to be far above float64 rounding).
"""

import json
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip("torch")
F = torch.nn.functional

from larq_esbnn import cli, models  # noqa: E402
from larq_esbnn.torch_import import (  # noqa: E402
    CheckpointError,
    TernaryWeightsWarning,
    convert_checkpoint,
    import_state_dict,
    load_state_dict,
)

SPECS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "specs" / "torch_state_dicts"
REACTNET_A = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
BCDNET_A = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 1024]


def released(name):
    path = SPECS / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())


def released_shapes(name):
    return released(name)["state_dict"]


def random_state_dict(shapes, seed):
    """Random float32 tensors with the released names / shapes; BN statistics non-trivial."""
    g = torch.Generator().manual_seed(seed)

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    sd = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(1000)
        elif name.endswith("running_var"):
            sd[name] = uniform(shape, 0.5, 2.0)
        elif name.endswith("running_mean"):
            sd[name] = 0.5 * torch.randn(shape, generator=g)
        elif ".prelu" in name:
            sd[name] = uniform(shape, 0.0, 0.5)
        elif len(shape) == 1 and name.endswith(".weight"):  # BN gamma
            sd[name] = uniform(shape, 0.5, 1.5)
        elif name.endswith(".bias"):  # BN beta, learnable biases, fc bias
            sd[name] = 0.2 * torch.randn(shape, generator=g)
        else:  # conv / linear / flattened binary weights
            fan_in = math.prod(shape[1:]) if len(shape) > 1 and shape[1] > 1 else 1
            w = torch.randn(shape, generator=g)
            # torch's float32 randn emits exact zeros now and then; sign(0) differs
            # between the reference (0) and larq (+1), so keep weights off zero
            w = torch.where(w == 0, torch.full_like(w, 0.5), w)
            sd[name] = w / math.sqrt(fan_in)
    return sd


# ------------------------------------------------------------ reference forward


class Reference:
    """The released models' inference semantics, written as functions over a state dict."""

    def __init__(self, sd):
        self.sd = {k: (v.double() if v.is_floating_point() else v) for k, v in sd.items()}
        self.min_presign = math.inf

    def rsign(self, x, name):  # RSign: x + b, then sign (sign(0) = 0)
        t = x + self.sd[name + ".bias"]
        self.min_presign = min(self.min_presign, t.abs().min().item())
        return torch.sign(t)

    def bconv(self, b, w, stride=1):  # scaled binary weight, zero padding of the binary input
        alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(b, alpha * torch.sign(w), stride=stride, padding=w.shape[-1] // 2)

    def bn(self, x, p):
        s = self.sd
        return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"],
                            s[p + ".bias"], training=False, eps=1e-5)

    def rprelu(self, x, move_in, prelu, move_out):
        x = F.prelu(x + self.sd[move_in + ".bias"], self.sd[prelu + ".weight"])
        return x + self.sd[move_out + ".bias"]

    def weight(self, p, out, inp, k):
        if p + ".weights" in self.sd:  # ReActNet-A release: flat parameter viewed as (out, in, k, k)
            return self.sd[p + ".weights"].view(out, inp, k, k)
        return self.sd[p + ".weight"]

    def reactnet_a_features(self, x, channels, tau=1):
        x = self.bn(F.conv2d(x, self.sd["feature.0.conv1.weight"], stride=2, padding=1), "feature.0.bn1")
        x = x.repeat(1, tau, 1, 1)
        rep = tau * tau
        for i in range(1, len(channels)):
            cin, cout = channels[i - 1], channels[i]
            stride = 2 if cout != cin and i > 1 else 1
            p = f"feature.{i}."
            w = self.weight(p + "binary_3x3", cin // tau, cin * tau, 3)
            y = self.bconv(self.rsign(x, p + "move11"), w, stride).repeat(1, rep, 1, 1)
            y = self.bn(y, p + "bn1")
            shortcut = F.avg_pool2d(x, 2) if stride == 2 else x
            out1 = self.rprelu(y + shortcut, p + "move12", p + "prelu1", p + "move13")
            b = self.rsign(out1, p + "move21")
            if cin == cout:
                w = self.weight(p + "binary_pw", cout // tau, cin * tau, 1)
                out2 = self.bn(self.bconv(b, w).repeat(1, rep, 1, 1), p + "bn2") + out1
            else:
                halves = []
                for k in (1, 2):
                    w = self.weight(p + f"binary_pw_down{k}", cin // tau, cin * tau, 1)
                    h = self.bn(self.bconv(b, w).repeat(1, rep, 1, 1), p + f"bn2_{k}")
                    halves.append(h + out1)
                out2 = torch.cat(halves, dim=1)
            x = self.rprelu(out2, p + "move22", p + "prelu2", p + "move23")
        return x

    def fc(self, x, name="fc"):
        return x.mean(dim=(2, 3)) @ self.sd[name + ".weight"].T + self.sd[name + ".bias"]

    def reactnet_a(self, x, tau=1):
        return self.fc(self.reactnet_a_features(x, REACTNET_A, tau))

    def reactnet_18(self, x):
        s = self.sd
        x = self.bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), "bn1")
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        for stage, _ in enumerate([64, 128, 256, 512]):
            for j in range(4):
                p = f"layer{stage + 1}.{j}."
                stride = 2 if stage > 0 and j == 0 else 1
                y = self.bconv(self.rsign(x, p + "move0"), s[p + "binary_conv.weight"], stride)
                y = self.bn(y, p + "bn1")
                if stride == 2:  # downsample: AvgPool 2x2 -> real 1x1 conv -> BN
                    shortcut = F.conv2d(F.avg_pool2d(x, 2), s[p + "downsample.1.weight"])
                    shortcut = self.bn(shortcut, p + "downsample.2")
                else:
                    shortcut = x
                x = self.rprelu(y + shortcut, p + "move1", p + "prelu", p + "move2")
        return self.fc(x)

    @staticmethod
    def shift(b, k):  # quarters rolled +k / -k along H, then +k / -k along W (circular)
        q = torch.chunk(b, 4, dim=1)
        return torch.cat([torch.roll(q[0], k, 2), torch.roll(q[1], -k, 2),
                          torch.roll(q[2], k, 3), torch.roll(q[3], -k, 3)], dim=1)

    def bcdnet_a(self, x, long_shift=3):
        s = self.sd
        x = self.reactnet_a_features(x, BCDNET_A)
        for r in range(3):
            for k in range(4):
                p = f"mlp_layer.{r}.mlp_layer.{k}."
                b = self.rsign(x, p + "move0")
                y = self.bconv(b, s[p + "binary_conv.weight"])
                if k < 3:  # shift block; k == 3 is the point block
                    y = y + self.bconv(self.shift(b, 1), s[p + "binary_conv1.weight"])
                    y = y + self.bconv(self.shift(b, long_shift), s[p + "binary_conv2.weight"])
                x = self.rprelu(self.bn(y, p + "bn1") + x, p + "move1", p + "prelu", p + "move2")
        return (self.fc(x, "fc") + self.fc(x, "fc_dist")) / 2


# ------------------------------------------------------------------ helpers


def trainable(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _inputs(size, seed=0):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def compare(label, model, ref, reference_fn, size):
    x = _inputs(size)
    with torch.no_grad():
        expected = reference_fn(x).numpy()
    got = model(x.permute(0, 2, 3, 1).numpy(), training=False).numpy()
    diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    print(f"\n{label}: max abs diff {diff:.3e}, largest |logit| {scale:.3e}, "
          f"ratio {diff / scale:.2e}, smallest |pre-sign| {ref.min_presign:.2e}")
    assert ref.min_presign > 1e-9  # far from float64 rounding: no sign can flip
    assert got.shape == expected.shape
    assert diff < 1e-3 * scale
    return diff, scale


# -------------------------------------------------------------------- tests


def test_reactnet_a_flat_weights(float64, capsys):
    shapes = released_shapes("reactnet_a")
    assert "feature.1.binary_3x3.weights" in shapes  # the flattened release form
    sd = random_state_dict(shapes, seed=1)
    checkpoint = {"epoch": 256, "best_top1_acc": 0.0,
                  "state_dict": {"module." + k: v for k, v in sd.items()}}
    model, report = convert_checkpoint("reactnet_a", checkpoint, input_shape=(64, 64, 3))
    assert report.unused == []
    assert trainable(model) == released("reactnet_a")["params"]
    ref = Reference(sd)
    compare("reactnet_a", model, ref, ref.reactnet_a, 64)

    broken = {k: v.numpy() for k, v in sd.items()}
    broken["feature.3.binary_pw.weights"] = broken["feature.3.binary_pw.weights"][:-1]
    with pytest.raises(CheckpointError, match=r"'feature\.3\.binary_pw\.weights' has shape \(16383, 1\), expected \(16384, 1\)"):
        import_state_dict(model, "reactnet_a", broken)


def test_es_reactnet_a_tau2(float64):
    shapes = released_shapes("es_reactnet_a_tau2")
    sd = random_state_dict(shapes, seed=2)
    model, _ = convert_checkpoint("es_reactnet_a", sd, input_shape=(64, 64, 3))
    assert model.get_layer("b1_conv1").kernel.shape == (3, 3, 64, 16)
    ref = Reference(sd)
    compare("es_reactnet_a (tau=2)", model, ref, lambda x: ref.reactnet_a(x, tau=2), 64)


def test_reactnet_18_via_cli(tmp_path, capsys):
    shapes = released_shapes("reactnet_18")
    sd = random_state_dict(shapes, seed=3)
    path = tmp_path / "reactnet18.pth.tar"
    state = {"module." + k: v for k, v in sd.items()}
    state["module.fc_extra.weight"] = torch.zeros(3)
    torch.save({"epoch": 1, "state_dict": state}, path)
    out = tmp_path / "reactnet_18.h5"
    assert cli.main(["import-torch", "reactnet_18", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "1 unused" in printed.out and "sha256" in printed.out
    assert "not used: fc_extra.weight" in printed.err
    tf.keras.backend.clear_session()
    tf.keras.backend.set_floatx("float64")
    try:
        model = models.reactnet_18(input_shape=(64, 64, 3), weights=str(out))
        ref = Reference(sd)
        with capsys.disabled():
            compare("reactnet_18", model, ref, ref.reactnet_18, 64)
    finally:
        tf.keras.backend.set_floatx("float32")
    assert cli.main(["import-torch", "reactnet_18", str(path), "-o", str(tmp_path / "x.keras")]) == 2


def test_bcdnet_a_two_heads(float64):
    shapes = released_shapes("bcdnet_a")
    sd = random_state_dict(shapes, seed=4)
    checkpoint = {"model": {"module." + k: v for k, v in sd.items()}, "optimizer": {}, "last_iter": 5}
    # 128 px: the MLP stage runs at 4x4, where shifts of 1 and 3 differ in every direction
    model, _ = convert_checkpoint("bcdnet_a", checkpoint, input_shape=(128, 128, 3), long_shift=3)
    assert trainable(model) == released("bcdnet_a")["params"]
    ref = Reference(sd)
    compare("bcdnet_a", model, ref, lambda x: ref.bcdnet_a(x, long_shift=3), 128)


def test_errors_name_the_tensor(capsys):
    shapes = released_shapes("reactnet_18")
    sd = {k: v.numpy() for k, v in random_state_dict(shapes, seed=5).items()}
    model = models.reactnet_18(input_shape=(64, 64, 3))

    missing = dict(sd)
    del missing["layer3.0.downsample.1.weight"]
    with pytest.raises(CheckpointError, match=r"'layer3\.0\.downsample\.1\.weight'.*l8_sc_conv"):
        import_state_dict(model, "reactnet_18", missing)

    wrong = dict(sd)
    wrong["layer2.1.bn1.running_var"] = np.ones(64, "float32")
    with pytest.raises(CheckpointError, match=r"'layer2\.1\.bn1\.running_var' has shape \(64,\), expected \(128,\)"):
        import_state_dict(model, "reactnet_18", wrong)

    zero = dict(sd)
    zero["layer1.0.binary_conv.weight"] = sd["layer1.0.binary_conv.weight"].copy()
    zero["layer1.0.binary_conv.weight"][3, 2, 1, 0] = 0.0
    with pytest.warns(TernaryWeightsWarning, match=r"1 latent binary weights are exactly 0 \(in layer1\.0\.binary_conv -> l0_conv \(1\)\)"):
        import_state_dict(model, "reactnet_18", zero)

    extra = dict(sd, **{"extra.weight": np.zeros(3, "float32")})
    assert import_state_dict(model, "reactnet_18", extra).unused == ["extra.weight"]
    # the values landed where they belong (transposes / reshapes)
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel.numpy(),
                                  sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("head_fc").kernel.numpy(), sd["fc.weight"].T)
    rp = model.get_layer("l5_rprelu").get_weights()
    np.testing.assert_array_equal(rp[0], sd["layer2.1.move1.bias"].reshape(-1))
    np.testing.assert_array_equal(rp[1], sd["layer2.1.prelu.weight"])
    np.testing.assert_array_equal(rp[2], sd["layer2.1.move2.bias"].reshape(-1))

    tf.keras.backend.clear_session()
    headless = models.reactnet_18(input_shape=(64, 64, 3), include_top=False)
    assert import_state_dict(headless, "reactnet_18", sd).unused == ["fc.bias", "fc.weight"]

    with pytest.raises(CheckpointError, match="not a tensor"):
        load_state_dict({"epoch": 3, "weights": {}})
    with pytest.raises(ValueError, match="unsupported model 'resnet20'"):
        import_state_dict(model, "resnet20", sd)
    with pytest.raises(FileNotFoundError):
        load_state_dict("/nonexistent/checkpoint.pth")
