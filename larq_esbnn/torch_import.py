"""Import the authors' released PyTorch checkpoints into the Keras models.

Supported: ``reactnet_a`` (ReActNet release, MobileNet), ``reactnet_18``
(ReActNet release, ResNet-18), ``es_reactnet_a`` (Rep-ReActNet release, tau=2)
and ``bcdnet_a`` (BCDNet release); ``bnext_t`` and ``es_bnext_t`` (below).
``tests/test_torch_import.py`` and ``tests/test_bnext.py`` build the released
tensor names and shapes and check every rule against them.

    model = convert_checkpoint("reactnet_a", "checkpoint.pth.tar")
    larq-esbnn import-torch reactnet_a checkpoint.pth.tar -o reactnet_a.h5

The conversion is driven by the Keras model: every Keras layer with weights is
mapped to its torch tensors by name; a missing tensor or a wrong shape raises,
naming the tensor. Tensors left over are reported (returned and printed);
``num_batches_tracked`` counters are dropped silently.

Conversions (torch NCHW -> Keras NHWC):
- conv weight (out, in, kh, kw) -> kernel (kh, kw, in, out); the ReActNet-A
  release stores binary weights flattened as ``...weights`` [out*in*k*k, 1]
  (a ``view`` of (out, in, k, k)), which is reshaped first. For ES the torch
  binary conv [C_out/tau, C_in*tau, k, k] is the BinaryConv2D kernel
  (k, k, C_in*tau, C_out/tau); the tiling has no weights;
- linear (out, in) -> (in, out); fc -> head_fc, fc_dist -> head_fc_dist;
- BatchNorm weight, bias, running_mean, running_var -> gamma, beta,
  moving_mean, moving_variance;
- learnable biases ("move") [1, C, 1, 1] -> [C]; RPReLU = (moveX2, preluX, moveX3).

BCDNet MLP stage (an ASSUMPTION, not checked against trained weights): in the
release block ``mlp_layer.R.mlp_layer.K``, ``binary_conv`` acts on the
unshifted tensor, ``binary_conv1`` on the short-range (1) shift and
``binary_conv2`` on the long-range shift; they map to our ``mlp{j}_pw``,
``mlp{j}_short`` and ``mlp{j}_long`` with ``j = 4 R + K`` (4 = shift blocks +
point blocks per repeat). If a converted BCDNet-A loses accuracy, swapping
short / long is the first thing to try.

BNext (``bnext_t``: upstream ``src/bnext.py``; ``es_bnext_t``: the ES-BNN
release ``src/bnext_rep_ops.py``, rep_beta 2): ``feature.{i}.Attention`` (the
3x3 unit, also when it is an FFN_3x3), ``.FFN`` / ``.FFN_1`` / ``.FFN_2`` map to
``b{i}_u3_*``, ``b{i}_ffn*_*``; ``move`` -> ``_move``, ``binary_conv`` ->
``_conv`` (kernel and ``temperature``), ``norm1/2`` -> ``_bn1/2``,
``activation1/2`` -> ``_prelu1/2``, ``scale`` -> ``_recouple`` (lambda; clamped
to [0, 1] for the FFN_1x1 units, whose released forward clamps it in eval
too), ``se.se.1`` / ``se.se.3`` (ES: ``se.se.4``) -> ``_se1`` / ``_se2``; the
stem's and FFNs' unused PReLUs -> :class:`larq_esbnn.layers.UnusedWeight`;
``prelu`` -> ``head_prelu``. HardSign's ``binary_activation.temperature`` does
not change any output and is read but not stored. A binary conv whose weight
temperature is still >= 1e-7 has real weights clip(W / T, -1, 1) in the
release: it is converted as such (same outputs) with a warning, or refused
with ``require_binary=True`` / ``--require-binary``. A checkpoint with
``num_classes != 1000`` gets ``stem_strides=1``, the release's rule.

The released models compute sign(0) = 0 where larq gives +1, and pad stride-2
binary convs symmetrically (our BinaryConv2D does too); outputs agree with a
reference PyTorch forward to ~1e-6 relative (tests/test_torch_import.py). Latent
binary weights that are exactly 0 (ternary in the released forward) are counted
per tensor: a :class:`TernaryWeightsWarning` says how many and where, and
:func:`import_state_dict` returns them in its :class:`ImportReport`.
"""

import os
import re
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from larq_esbnn import registry
from larq_esbnn.errors import BadArgument, BadWeights, check_new_output
from larq_esbnn.layers import BinaryConv2D
from larq_esbnn.quantizers import TEMPERATURE_BINARY_THRESHOLD
from larq_esbnn.util import atomic_path, sha256_file

SUPPORTED = {
    "reactnet_a": "ReActNet release (MobileNet, step 2)",
    "es_reactnet_a": "Rep-ReActNet release (ES, tau=2, step 2)",
    "reactnet_18": "ReActNet release (ResNet-18, step 2)",
    "bcdnet_a": "BCDNet release (step 2)",
    "bnext_t": "BNext release (src/bnext.py, size tiny)",
    "es_bnext_t": "ES-BNN release (src/bnext_rep_ops.py, rep_beta=2)",
}
BNEXT_MODELS = ("bnext_t", "es_bnext_t")

_BLOCK = re.compile(r"^b(\d+)_(.+)$")
_RESNET = re.compile(r"^l(\d+)_(.+)$")
_MLP = re.compile(r"^mlp(\d+)_(.+)$")

# per-block Keras layer suffix -> (kind, torch names relative to the block prefix)
_REACTNET_A_BLOCK = {
    "1_move": ("bias", "move11"),
    "conv1": ("conv", "binary_3x3"),
    "bn1": ("bn", "bn1"),
    "rprelu1": ("rprelu", ("move12", "prelu1", "move13")),
    "2_move": ("bias", "move21"),
    "conv2": ("conv", "binary_pw"),
    "bn2": ("bn", "bn2"),
    "conv2a": ("conv", "binary_pw_down1"),
    "conv2b": ("conv", "binary_pw_down2"),
    "bn2a": ("bn", "bn2_1"),
    "bn2b": ("bn", "bn2_2"),
    "rprelu2": ("rprelu", ("move22", "prelu2", "move23")),
}
_RESNET_LAYER = {
    "move": ("bias", "move0"),
    "conv": ("conv", "binary_conv"),
    "bn": ("bn", "bn1"),
    "rprelu": ("rprelu", ("move1", "prelu", "move2")),
    "sc_conv": ("conv", "downsample.1"),
    "sc_bn": ("bn", "downsample.2"),
}
_MLP_BLOCK = {
    "move": ("bias", "move0"),
    "pw": ("conv", "binary_conv"),
    "short": ("conv", "binary_conv1"),
    "long": ("conv", "binary_conv2"),
    "bn": ("bn", "bn1"),
    "rprelu": ("rprelu", ("move1", "prelu", "move2")),
}


# BNext: Keras unit tag -> torch module; per-unit Keras layer suffix -> (kind, torch name)
_BNEXT_LAYER = re.compile(r"^b(\d+)_(u3|ffn|ffn1|ffn2)_(.+)$")
_BNEXT_UNITS = {"u3": "Attention", "ffn": "FFN", "ffn1": "FFN_1", "ffn2": "FFN_2"}
_BNEXT_UNIT = {
    "move": ("bias", "move"),
    "conv": ("temperature_conv", "binary_conv"),
    "bn1": ("bn", "norm1"),
    "bn2": ("bn", "norm2"),
    "prelu1": ("prelu", "activation1"),
    "prelu2": ("prelu", "activation2"),
    "recouple": ("scale", "scale"),
    "se1": ("conv_bias", "se.se.1"),
    "se2": ("conv_bias", ("se.se.3", "se.se.4")),  # tau = 1 / ES (a tile module sits at index 3)
}


class CheckpointError(BadWeights):
    """A checkpoint that does not fit the requested model."""


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "reading PyTorch checkpoints needs torch: pip install 'larq-esbnn[torch]' "
            "(pins the CPU build torch==2.13.0)"
        ) from None
    return torch


def _unreadable(path, err):
    """Why torch could not read ``path``, without torch's advice to turn off weights_only
    (that would run code from the file)."""
    text = str(err)
    if "weights_only" in text or "Unsupported" in text:
        reason = "it holds Python objects other than tensors, or is not a checkpoint at all"
    else:
        reason = f"{type(err).__name__}: {text.splitlines()[0] if text.strip() else 'unreadable'}"
    return (f"{path} is not a PyTorch checkpoint that can be read safely ({reason}); expected a .pth "
            "file written by torch.save(model.state_dict())")


def load_state_dict(checkpoint):
    """A flat {name: numpy array} from a checkpoint path, a checkpoint dict or a state dict.

    Accepts the release containers (``state_dict`` or ``model`` key) and bare
    state dicts; strips ``module.`` prefixes (DataParallel). Files are read
    with ``torch.load(weights_only=True, map_location="cpu")``.
    """
    if not isinstance(checkpoint, dict):
        torch = _torch()
        path = checkpoint
        if os.path.isdir(path):
            raise CheckpointError(f"{path} is a directory, not a PyTorch checkpoint file")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise CheckpointError(f"{path} is empty, not a PyTorch checkpoint")
        try:
            checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        except FileNotFoundError:
            raise
        except Exception as err:  # torch raises many types for unreadable files
            raise CheckpointError(_unreadable(path, err)) from None
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint: expected a "
                                  "state dict or a dict with a 'state_dict' or 'model' key")
    state = checkpoint
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            state = checkpoint[key]
            break
    out = {}
    for name, value in state.items():
        if not hasattr(value, "shape"):
            raise CheckpointError(
                f"checkpoint entry {name!r} is a {type(value).__name__}, not a tensor; expected a "
                f"state dict or a dict with a 'state_dict' or 'model' key (keys: {sorted(checkpoint)[:8]})"
            )
        while name.startswith("module."):
            name = name[len("module."):]
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            value = value.float().numpy() if value.is_floating_point() else value.numpy()
        out[name] = np.asarray(value)
    return out


def _rule(model_name, layer_name, mlp_per_repeat):
    """Keras layer name -> (kind, torch prefix or tuple of prefixes), or None."""
    if layer_name in ("head_fc", "head_fc_dist"):
        return "dense", "fc" if layer_name == "head_fc" else "fc_dist"
    if model_name in BNEXT_MODELS:
        return _bnext_rule(layer_name)
    if model_name == "reactnet_18":
        if layer_name == "stem_conv":
            return "conv", "conv1"
        if layer_name == "stem_bn":
            return "bn", "bn1"
        m = _RESNET.match(layer_name)
        if m and m.group(2) in _RESNET_LAYER:
            stage, j = divmod(int(m.group(1)), 4)
            kind, rel = _RESNET_LAYER[m.group(2)]
            return kind, _join(f"layer{stage + 1}.{j}.", rel)
        return None
    if layer_name == "stem_conv":
        return "conv", "feature.0.conv1"
    if layer_name == "stem_bn":
        return "bn", "feature.0.bn1"
    m = _BLOCK.match(layer_name)
    if m and m.group(2) in _REACTNET_A_BLOCK:
        kind, rel = _REACTNET_A_BLOCK[m.group(2)]
        return kind, _join(f"feature.{int(m.group(1))}.", rel)
    m = _MLP.match(layer_name)
    if m and m.group(2) in _MLP_BLOCK and model_name == "bcdnet_a":
        r, k = divmod(int(m.group(1)), mlp_per_repeat)
        kind, rel = _MLP_BLOCK[m.group(2)]
        return kind, _join(f"mlp_layer.{r}.mlp_layer.{k}.", rel)
    return None


def _bnext_rule(layer_name):
    fixed = {
        "stem_conv": ("conv", "feature.0.conv1"),
        "stem_bn": ("bn", "feature.0.bn1"),
        "stem_prelu": ("prelu", "feature.0.prelu"),
        "head_prelu": ("prelu", "prelu"),
    }
    if layer_name in fixed:
        return fixed[layer_name]
    m = _BNEXT_LAYER.match(layer_name)
    if not m or m.group(3) not in _BNEXT_UNIT:
        return None
    kind, rel = _BNEXT_UNIT[m.group(3)]
    if kind == "scale" and m.group(2) != "u3":
        kind = "scale_clamped"  # FFN_1x1 clamps lambda to [0, 1] in eval too; the 3x3 units do not
    prefix = f"feature.{int(m.group(1))}.{_BNEXT_UNITS[m.group(2)]}."
    if isinstance(rel, tuple):
        return kind, tuple(prefix + r for r in rel)
    return kind, prefix + rel


def _join(prefix, rel):
    return tuple(prefix + r for r in rel) if isinstance(rel, tuple) else prefix + rel


class _Source:
    """The state dict with bookkeeping of what was used."""

    def __init__(self, state):
        self.state = state
        self.used = set()
        self.zero_binary = {}  # torch prefix -> {"layer", "count", "first"} for exact zeros in a binary kernel
        self.soft_temperature = {}  # BNext conv -> its weight temperature when >= 1e-7 (real weights)
        self.temperatures = 0  # BNext binary convs seen

    def take(self, name, shape, layer):
        if name not in self.state:
            raise CheckpointError(
                f"checkpoint has no tensor {name!r} (needed for Keras layer {layer!r}, "
                f"expected shape {tuple(shape)})"
            )
        value = self.state[name]
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(value.shape)}, expected {tuple(shape)} "
                f"for Keras layer {layer!r}"
            )
        self.used.add(name)
        return value

    def unused(self):
        return sorted(
            n for n in self.state if n not in self.used and not n.endswith("num_batches_tracked")
        )


def _convert_layer(src, layer, kind, prefix):
    """Torch tensors -> the list of values for ``layer.get_weights()``."""
    binary = isinstance(layer, BinaryConv2D)
    shapes = [tuple(w.shape) for w in layer.weights]
    name = layer.name
    if kind == "conv":
        (kh, kw, cin, cout), = shapes
        torch_shape = (cout, cin, kh, kw)
        if prefix + ".weights" in src.state and prefix + ".weight" not in src.state:
            # ReActNet-A release: HardBinaryConv keeps a flat [out*in*k*k, 1] parameter
            flat = src.take(prefix + ".weights", (cout * cin * kh * kw, 1), name)
            w = flat.reshape(torch_shape)
        elif prefix + ".weight" in src.state:
            w = src.take(prefix + ".weight", torch_shape, name)
        else:
            raise CheckpointError(
                f"checkpoint has no tensor {prefix + '.weight'!r} (nor the flattened form "
                f"{prefix + '.weights'!r}) for Keras layer {name!r}, expected shape {torch_shape}"
            )
        zeros = int(np.count_nonzero(w == 0))
        if zeros and binary:
            first = [tuple(int(i) for i in ix) for ix in np.argwhere(w == 0)[:5]]
            src.zero_binary[prefix] = {"layer": name, "count": zeros, "first": first}
        return [np.transpose(w, (2, 3, 1, 0))]
    if kind == "bn":
        (c,) = shapes[0]
        return [src.take(f"{prefix}.{k}", (c,), name)
                for k in ("weight", "bias", "running_mean", "running_var")]
    if kind == "bias":
        (c,) = shapes[0]
        return [src.take(prefix + ".bias", (1, c, 1, 1), name).reshape(c)]
    if kind == "rprelu":
        c = shapes[0][0]
        move_in, prelu, move_out = prefix
        return [
            src.take(move_in + ".bias", (1, c, 1, 1), name).reshape(c),
            src.take(prelu + ".weight", (c,), name),
            src.take(move_out + ".bias", (1, c, 1, 1), name).reshape(c),
        ]
    if kind == "temperature_conv":
        (kh, kw, cin, cout), () = shapes
        w = src.take(prefix + ".weight", (cout, cin, kh, kw), name)
        t = float(src.take(prefix + ".temperature", (1,), name)[0])
        # HardSign's own temperature never changes its output (sign(x / T) = sign(x))
        act = prefix.rsplit(".", 1)[0] + ".binary_activation.temperature"
        if act in src.state:
            src.take(act, (1,), name)
        src.temperatures += 1
        if t >= TEMPERATURE_BINARY_THRESHOLD:
            src.soft_temperature[prefix] = t
        elif np.count_nonzero(w == 0):
            first = [tuple(int(i) for i in ix) for ix in np.argwhere(w == 0)[:5]]
            src.zero_binary[prefix] = {"layer": name, "count": int(np.count_nonzero(w == 0)), "first": first}
        return [np.transpose(w, (2, 3, 1, 0)), np.asarray(t, np.float32)]
    if kind == "conv_bias":
        (kh, kw, cin, cout), (nb,) = shapes
        names = prefix if isinstance(prefix, tuple) else (prefix,)
        found = [p for p in names if p + ".weight" in src.state]
        if not found:
            raise CheckpointError(
                f"checkpoint has no tensor {' or '.join(repr(n + '.weight') for n in names)} for Keras "
                f"layer {name!r}, "
                f"expected shape {(cout, cin, kh, kw)}"
            )
        p = found[0]
        return [np.transpose(src.take(p + ".weight", (cout, cin, kh, kw), name), (2, 3, 1, 0)),
                src.take(p + ".bias", (cout,), name)]
    if kind == "prelu":
        shape = shapes[0]
        c = int(np.prod(shape))
        return [src.take(prefix + ".weight", (c,), name).reshape(shape)]
    if kind in ("scale", "scale_clamped"):
        (c,) = shapes[0]
        value = src.take(prefix, (1, c, 1, 1), name).reshape(c)
        return [np.clip(value, 0, 1) if kind == "scale_clamped" else value]
    if kind == "dense":
        (cin, cout), (nb,) = shapes
        return [src.take(prefix + ".weight", (cout, cin), name).T,
                src.take(prefix + ".bias", (cout,), name)]
    raise AssertionError(kind)


class TernaryWeightsWarning(UserWarning):
    """Latent binary weights that are exactly 0 in a checkpoint (see :class:`ImportReport`)."""


@dataclass
class ImportReport:
    """What an import did besides copying values.

    unused: checkpoint tensors no Keras layer took (``num_batches_tracked`` aside).
    zero_weights: torch tensor prefix -> ``{"layer": Keras layer, "count": n,
    "first": up to 5 (out, in, kh, kw) indices}`` of latent binary weights that
    are exactly 0. The released PyTorch code binarises with ``sign``, and
    ``sign(0) = 0``: such a weight is ternary there (it drops out of the sum),
    while a binary kernel here is ``+-alpha`` (larq's sign gives +1 at 0), so the
    outputs of the two can differ.
    """

    unused: list = field(default_factory=list)
    zero_weights: dict = field(default_factory=dict)

    @property
    def zero_total(self):
        return sum(z["count"] for z in self.zero_weights.values())

    def zeros_message(self):
        """One warning line: how many and where, or "" when there are none."""
        if not self.zero_weights:
            return ""
        items = sorted(self.zero_weights.items())
        where = ", ".join(f"{k} -> {z['layer']} ({z['count']})" for k, z in items[:5])
        more = f" and {len(items) - 5} more tensors" if len(items) > 5 else ""
        return (f"{self.zero_total} latent binary weights are exactly 0 (in {where}{more}): the "
                "released PyTorch code binarises them to sign(0) = 0, here they become +alpha, "
                "so outputs can differ slightly from the PyTorch model")

    def as_dict(self):
        return {"unused": list(self.unused),
                "zero_weights": {k: {**z, "first": [list(i) for i in z["first"]]}
                                 for k, z in sorted(self.zero_weights.items())},
                "zero_total": self.zero_total}


def import_state_dict(model, model_name, state, mlp_per_repeat=4, require_binary=False):
    """Copy a flat numpy state dict into ``model``; return an :class:`ImportReport`.

    Latent binary weights that are exactly 0 are also reported with a
    :class:`TernaryWeightsWarning` (how many, in which tensors and layers).

    BNext checkpoints: each binary conv's ``temperature`` buffer is copied into
    the layer's temperature weight, so the Keras model computes what the
    checkpoint computes. Where T >= 1e-7 the release's weights are real-valued
    (clip(W / T, -1, 1)); such a checkpoint is converted as it is, with a
    warning on stderr (its convs are not binary: LCE keeps them float and
    ``check_export`` reports them), or refused with ``require_binary=True``.
    """
    if model_name not in SUPPORTED:
        raise ValueError(f"unsupported model {model_name!r} for torch import; supported: {', '.join(SUPPORTED)}")
    src = _Source(state)
    values = []
    for layer in model.layers:
        if not layer.weights:
            continue
        rule = _rule(model_name, layer.name, mlp_per_repeat)
        if rule is None:
            raise CheckpointError(
                f"Keras layer {layer.name!r} of {model.name!r} has no counterpart in the "
                f"{SUPPORTED[model_name]} checkpoint (build the model with its released "
                "arguments: no groups, no dynamic thresholds)"
            )
        new = _convert_layer(src, layer, *rule)
        values.append((layer, new))
    if src.soft_temperature:
        _temperature_message(src, require_binary)
    import tensorflow as tf

    tf.keras.backend.batch_set_value(
        [(w, v.astype(w.dtype.as_numpy_dtype)) for layer, new in values
         for w, v in zip(layer.weights, new)]
    )
    report = ImportReport(src.unused(), dict(src.zero_binary))
    if report.zero_weights:
        warnings.warn("larq-esbnn import-torch: " + report.zeros_message(), TernaryWeightsWarning, stacklevel=2)
    return report


def assign_state_dict(model, model_name, state, mlp_per_repeat=4, require_binary=False):
    """Copy a flat numpy state dict into ``model``; return the unused tensor names
    (:func:`import_state_dict` returns the full report)."""
    return import_state_dict(model, model_name, state, mlp_per_repeat, require_binary).unused


def _temperature_message(src, require_binary):
    ts = sorted(src.soft_temperature.values())
    n = len(ts)
    text = (
        f"{n} of {src.temperatures} binary convs have a weight temperature T >= 1e-7 "
        f"(T from {ts[0]:.3g} to {ts[-1]:.3g}, e.g. {next(iter(src.soft_temperature))}): their "
        "weights are the real values clip(W / T, -1, 1), not +-1. This happens when the "
        "temperature was not annealed (the released ES-BNext script never lowers it; "
        "0.9^153 < 1e-7 is reached after 153 epochs of the BNext schedule)."
    )
    if require_binary:
        raise CheckpointError(text + " Refused (require_binary=True).")
    print(f"larq-esbnn import-torch: warning: {text} Converted as such: the Keras model computes the "
          "same real-valued convs, which LCE exports as float convs (check_export lists them) and the "
          "BOP counts treat as binary. Continue training with the temperature schedule (or set the "
          "layers' temperature to 0, which changes the outputs) to get a binary network.",
          file=sys.stderr)


def convert_checkpoint(model_name, checkpoint_path_or_state_dict, return_unused=False,
                       verbose=True, return_report=False, require_binary=False, **model_kwargs):
    """Build ``model_name`` (with ``model_kwargs``) and fill it from a PyTorch checkpoint.

    ``num_classes`` defaults to the checkpoint's ``fc`` rows. Unused tensors are
    printed to stderr (``verbose``) and returned with ``return_unused=True``,
    which gives ``(model, unused)``; ``return_report=True`` gives
    ``(model, ImportReport)`` (unused tensors and latent weights that are exactly 0).
    """
    if model_name not in SUPPORTED:
        raise ValueError(f"unsupported model {model_name!r} for torch import; supported: {', '.join(SUPPORTED)}")
    state = load_state_dict(checkpoint_path_or_state_dict)
    if "num_classes" not in model_kwargs and model_kwargs.get("include_top", True):
        if "fc.weight" in state and state["fc.weight"].ndim == 2:
            model_kwargs["num_classes"] = int(state["fc.weight"].shape[0])
    if model_name in BNEXT_MODELS and model_kwargs.get("num_classes", 1000) != 1000:
        # the release's stem has stride 1 whenever num_classes != 1000
        model_kwargs.setdefault("stem_strides", 1)
    model = registry.get(model_name, **model_kwargs)
    per_repeat = model_kwargs.get("shift_blocks", 3) + model_kwargs.get("point_blocks", 1)
    report = import_state_dict(model, model_name, state, per_repeat, require_binary)
    unused = report.unused
    if unused and verbose:
        print(f"larq-esbnn import-torch: {len(unused)} checkpoint tensors were not used: "
              + ", ".join(unused), file=sys.stderr)
    if return_report:
        return model, report
    return (model, unused) if return_unused else model


def add_commands(subparsers):
    p = subparsers.add_parser(
        "import-torch",
        help="convert a released PyTorch checkpoint to a Keras .h5 weights file",
        description="Convert a released PyTorch checkpoint (" + ", ".join(SUPPORTED) + ") "
        "into a Keras HDF5 weights file that loads with weights=PATH.",
    )
    p.add_argument("model", choices=sorted(SUPPORTED), metavar="MODEL",
                   help="one of: " + ", ".join(sorted(SUPPORTED)))
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="path of the .pth / .pth.tar file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="output weights file (.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.h5 if it exists")
    p.add_argument("--require-binary", action="store_true",
                   help="BNext: refuse a checkpoint whose weight temperature is still >= 1e-7 "
                        "(real-valued weights) instead of converting it with a warning")
    p.set_defaults(func=_cli_import)


def _cli_import(args):
    if not args.output.endswith(".h5"):
        raise BadArgument(f"output must end in .h5 (Keras HDF5 weights), got {args.output!r}")
    check_new_output(args.output, args.overwrite)
    try:
        model, unused = convert_checkpoint(args.model, args.checkpoint, return_unused=True,
                                           require_binary=args.require_binary)
    except ImportError as err:  # torch is an optional extra
        print(f"larq-esbnn import-torch: error: {err}", file=sys.stderr)
        return 2
    with atomic_path(args.output) as tmp:
        model.save_weights(tmp)
    print(f"wrote {args.output} ({model.count_params():,} parameters, "
          f"{len(unused)} unused checkpoint tensors)")
    print(f"sha256 {sha256_file(args.output)}")
    return 0
