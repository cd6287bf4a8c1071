"""Import the authors' released PyTorch checkpoints into the Keras models.

Which models can be imported, and how their releases name the tensors, is each
family's own knowledge: the family module under :mod:`larq_esbnn.models`
registers a rule per model with :func:`larq_esbnn.registry.register_torch_rules`
(ReActNet-A / -18 and ES-ReActNet-A in ``models/reactnet.py``, BCDNet-A in
``models/bcdnet.py``, BNext-T and ES-BNext-T in ``models/bnext.py``). This module
is the converter those rules drive; it never imports the families, so that
:mod:`larq_esbnn.weights` (below them) can convert a checkpoint on first use.
``tests/test_torch_import.py`` and ``tests/test_bnext.py`` build the released
tensor names and shapes and check every rule against them.

    model, report = convert_checkpoint("reactnet_a", "checkpoint.pth.tar")
    larq-esbnn import-torch reactnet_a checkpoint.pth.tar -o reactnet_a.h5

The conversion is driven by the Keras model: every Keras layer with weights is
mapped by its family's rule to a kind and torch tensor names; a missing tensor
or a wrong shape raises, naming the tensor. Tensors left over are listed in the
:class:`ImportReport`; ``num_batches_tracked`` counters are dropped silently.

Conversions by kind (torch NCHW -> Keras NHWC):
- ``conv``: weight (out, in, kh, kw) -> kernel (kh, kw, in, out); the ReActNet-A
  release stores binary weights flattened as ``...weights`` [out*in*k*k, 1]
  (a ``view`` of (out, in, k, k)), which is reshaped first. For ES the torch
  binary conv [C_out/tau, C_in*tau, k, k] is the BinaryConv2D kernel
  (k, k, C_in*tau, C_out/tau); the tiling has no weights;
- ``dense``: linear (out, in) -> (in, out) (:func:`classifier_rule`: fc ->
  head_fc, fc_dist -> head_fc_dist);
- ``bn``: weight, bias, running_mean, running_var -> gamma, beta,
  moving_mean, moving_variance;
- ``bias``: learnable biases ("move") [1, C, 1, 1] -> [C]; ``rprelu``: the
  three tensors (move in, PReLU, move out) of one RPReLU;
- ``temperature_conv``, ``conv_bias``, ``prelu``, ``scale`` /
  ``scale_clamped``: the BNext units (see ``models/bnext.py``).

The released models compute sign(0) = 0 where larq gives +1, and pad stride-2
binary convs symmetrically (our BinaryConv2D does too); outputs agree with a
reference PyTorch forward to ~1e-6 relative (tests/test_torch_import.py). Latent
binary weights that are exactly 0 (ternary in the released forward) are counted
per tensor: a :class:`TernaryWeightsWarning` says how many and where, and
:func:`import_state_dict` returns them in its :class:`ImportReport`.

BNext: a binary conv whose weight temperature is still >= 1e-7 has real weights
clip(W / T, -1, 1) in the release; it is converted as such (same outputs) with
a warning, or refused with ``require_binary=True`` / ``--require-binary``.
"""

import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from larq_esbnn import registry
from larq_esbnn.errors import BadArgument, BadWeights, check_new_output
from larq_esbnn.layers import BinaryConv2D
from larq_esbnn.quantizers import TEMPERATURE_BINARY_THRESHOLD
from larq_esbnn.util import atomic_path, sha256_file


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


def under(prefix, rel):
    """Torch name ``rel`` (or each of a tuple of names) below module ``prefix``."""
    return tuple(prefix + r for r in rel) if isinstance(rel, tuple) else prefix + rel


def from_table(table, suffix, prefix):
    """``(kind, torch names below prefix)`` for the Keras layer-name ``suffix`` in a
    family's ``{suffix: (kind, torch name(s))}`` table, or None if it is not there."""
    if suffix not in table:
        return None
    kind, rel = table[suffix]
    return kind, under(prefix, rel)


def classifier_rule(layer_name):
    """The classifier every release so far names ``fc`` (and BCDNet's second,
    distillation head ``fc_dist``), built by :func:`larq_esbnn.blocks.classifier`
    as ``head_fc`` / ``head_fc_dist``; None for any other layer."""
    return {"head_fc": ("dense", "fc"), "head_fc_dist": ("dense", "fc_dist")}.get(layer_name)


def supported():
    """``{model name: release}`` of the models whose checkpoints can be imported
    (those whose family registered rules; :mod:`larq_esbnn.models` must be imported)."""
    return registry.torch_models()


def _rules(model_name):
    rules = registry.torch_rules(model_name)
    if rules is None:
        known = ", ".join(supported()) or "none (import larq_esbnn.models first: the families register them)"
        raise ValueError(f"unsupported model {model_name!r} for torch import; supported: {known}")
    return rules


def release_kwargs(model_name, state, kwargs):
    """The arguments to build ``model_name`` with for checkpoint ``state``: ``kwargs``,
    ``num_classes`` from the checkpoint's ``fc`` rows unless given (or the head is
    left out), and whatever else the family says its release implies."""
    kwargs = dict(kwargs)
    fc = state.get("fc.weight")
    if "num_classes" not in kwargs and kwargs.get("include_top", True) and fc is not None and fc.ndim == 2:
        kwargs["num_classes"] = int(fc.shape[0])
    rules = _rules(model_name)
    return rules.release_args(kwargs) if rules.release_args else kwargs


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


def import_state_dict(model, model_name, state, *, args=None, require_binary=False):
    """Copy a flat numpy state dict into ``model``; return an :class:`ImportReport`.

    ``args``: the arguments ``model`` was built with, where they differ from the
    registered defaults and the family's rule depends on them (BCDNet's
    ``shift_blocks`` / ``point_blocks``). Latent binary weights that are exactly 0
    are also reported with a :class:`TernaryWeightsWarning` (how many, in which
    tensors and layers).

    BNext checkpoints: each binary conv's ``temperature`` buffer is copied into
    the layer's temperature weight, so the Keras model computes what the
    checkpoint computes. Where T >= 1e-7 the release's weights are real-valued
    (clip(W / T, -1, 1)); such a checkpoint is converted as it is, with a
    warning on stderr (its convs are not binary: LCE keeps them float and
    ``check_export`` reports them), or refused with ``require_binary=True``.
    """
    rules = _rules(model_name)
    args = registry.entry(model_name).resolved_args(args or {})
    src = _Source(state)
    values = []
    for layer in model.layers:
        if not layer.weights:
            continue
        rule = rules.layer_rule(layer.name, args)
        if rule is None:
            raise CheckpointError(
                f"Keras layer {layer.name!r} of {model.name!r} has no counterpart in the "
                f"{rules.source} checkpoint (build the model with its released "
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


def convert_checkpoint(model_name, checkpoint_path_or_state_dict, require_binary=False, **model_kwargs):
    """Build ``model_name`` (with ``model_kwargs``) and fill it from a PyTorch checkpoint;
    return ``(model, ImportReport)``.

    ``num_classes`` defaults to the checkpoint's ``fc`` rows, and the family may
    set further arguments its release implies (:func:`release_kwargs`). The
    report lists the checkpoint tensors no layer took and the latent binary
    weights that are exactly 0; nothing is printed here (the command line
    prints the unused tensors).
    """
    _rules(model_name)  # unsupported names fail before the checkpoint is read
    state = load_state_dict(checkpoint_path_or_state_dict)
    model_kwargs = release_kwargs(model_name, state, model_kwargs)
    model = registry.get(model_name, **model_kwargs)
    report = import_state_dict(model, model_name, state, args=model_kwargs, require_binary=require_binary)
    return model, report


def add_commands(subparsers):
    p = subparsers.add_parser(
        "import-torch",
        help="convert a released PyTorch checkpoint to a Keras .h5 weights file",
        description="Convert a released PyTorch checkpoint (" + ", ".join(supported()) + ") "
        "into a Keras HDF5 weights file that loads with weights=PATH.",
    )
    p.add_argument("model", choices=sorted(supported()), metavar="MODEL",
                   help="one of: " + ", ".join(sorted(supported())))
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
        model, report = convert_checkpoint(args.model, args.checkpoint, require_binary=args.require_binary)
    except ImportError as err:  # torch is an optional extra
        print(f"larq-esbnn import-torch: error: {err}", file=sys.stderr)
        return 2
    unused = report.unused
    if unused:
        print(f"larq-esbnn import-torch: {len(unused)} checkpoint tensors were not used: "
              + ", ".join(unused), file=sys.stderr)
    with atomic_path(args.output) as tmp:
        model.save_weights(tmp)
    print(f"wrote {args.output} ({model.count_params():,} parameters, "
          f"{len(unused)} unused checkpoint tensors)")
    print(f"sha256 {sha256_file(args.output)}")
    return 0
