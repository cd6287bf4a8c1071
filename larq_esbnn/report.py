"""Operation, parameter, memory and representation-capacity reports.

Counting conventions (those of the ES-BNN and BCDNet papers; BCDNet Table 1)
----------------------------------------------------------------------------
``convention="default"`` counts multiply-accumulates (MACs) only:

* BOPs: MACs of a conv / dense layer whose input *and* kernel are binary
  (kernel precision 1, input binarised by the layer's input quantizer or
  produced by a sign layer, possibly through shifts, splits, tiles or zero
  padding, as in the zoo's zero-padding shift mode).
* FLOPs: all other conv / dense MACs (stem, real 1x1 shortcuts, the head,
  BCDNet-B's contextual-threshold projections, and binary-input convs with
  real weights as in step 1 of the two-step recipe).
* Elementwise work (BN, biases, RPReLU, adds, pooling, shifts, tiling) is 0.
* Attention (:class:`~larq_esbnn.layers.TokenAttention`): Q K^T and P V are N M C
  MACs each, BOPs when both operands are binary (sign outputs; probabilities
  binarised to {0, alpha}), FLOPs otherwise; the softmax adds heads N M FLOPs
  (one per score) in both conventions.
* OPs = BOPs / 64 + FLOPs.

``convention="paper-extended"`` adds one real operation per output element of
every BatchNormalization, LearnableBias ("move", also RSign's bias), RPReLU and
Keras PReLU layer, and ``n - 1`` per output element of every ``n``-input Add
(the residual additions and the sum of BCDNet's three MLP branches). This
reproduces the second figures of BCDNet Table 1 (0.31e8 / 0.32e8 / 0.34e8
FLOPs for ReActNet-A / BCDNet-A / BCDNet-B). Pooling, concatenation, shifts,
tiling and the sign are still free. BCDNet-B's dynamic threshold ``- alpha``
and ``+ beta`` fold into the following sign bias and BN shift, so they cost
nothing extra in either convention. Measured at 224: ReActNet-A 0.312e8 FLOPs /
1.064e8 OPs, BCDNet-A 0.325e8 / 1.077e8, BCDNet-B 0.344e8 / 1.097e8 (paper:
0.31 / 1.06, 0.32 / 1.08, 0.34 / 1.09). Only BCDNet-B's OPs round differently
(1.10): its contextual module is inferred (r = 4 gives 1.91 M MACs, while the
paper's B figures taken together imply about 1.64-1.75 M). Counting one op per
element for every Add whatever its inputs fits B but gives 1.073e8 OPs for A.

In both conventions two linear dense heads that read the same features and
are only averaged (BCDNet's classification + distillation heads) are counted
as one head, because at inference ``(W1 x + b1 + W2 x + b2) / 2`` is a single
dense layer with ``(W1 + W2) / 2``; ``fold_heads=False`` counts both. Bias
additions of conv / dense layers are not counted.

Parameters and memory: every weight of the model (trainable and not) is
counted; a weight is binary when its precision is 1 (larq quantized
variables); memory is ``precision`` bits per weight (1 for binary weights, 32
for real ones).

Representation capacity (ES-BNN, Figure 4): a binary conv whose output entry
sums ``n = C_in * kh * kw`` products of +-1 values (``C_in`` = input channels
per group, so ``C_in * tau`` with ES) can take the ``n + 1`` values
``-n, -n + 2, ..., n``.
"""

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field

import larq as lq
import numpy as np
import tensorflow as tf

from larq_esbnn import (
    detection,  # noqa: F401  (registers the detectors, so they count and export)
    models,
)
from larq_esbnn import layers as zl

CONVENTIONS = ("default", "paper-extended")

_BINARY_FUNCTION_NAMES = {"ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign"}


# ----------------------------------------------------------------------------- helpers


def _precision(quantizer):
    """Bit width of the values a quantizer outputs (32 when there is none)."""
    if quantizer is None:
        return 32
    precision = getattr(quantizer, "precision", None)
    if precision is not None:
        return int(precision)
    if getattr(quantizer, "__name__", None) in _BINARY_FUNCTION_NAMES:
        return 1
    return 32


def _weight_bits(weight):
    return int(getattr(weight, "precision", None) or 32)


def _size(weight):
    return int(np.prod(weight.shape.as_list()))


def _spatial(shape):
    """Product of the dims between batch and channels (1 for (N, C))."""
    dims = shape[1:-1]
    if any(d is None for d in dims):
        raise ValueError(f"operation counts need static shapes, got {tuple(shape)}")
    return int(np.prod(dims)) if dims else 1


def _elements(shape):
    dims = shape[1:]
    if any(d is None for d in dims):
        raise ValueError(f"operation counts need static shapes, got {tuple(shape)}")
    return int(np.prod(dims))


@dataclass
class _Node:
    """One call of a layer inside the model graph."""

    layer: object
    inputs: list  # KerasTensors
    outputs: list
    input_binary: list  # per input: True when the tensor holds +-1 values
    parents: list  # producing layer of each input (None for model inputs)

    @property
    def input_shapes(self):
        return [tuple(t.shape) for t in self.inputs]

    @property
    def output_shapes(self):
        return [tuple(t.shape) for t in self.outputs]


@dataclass
class _Count:
    bops: int = 0
    real_macs: int = 0
    elementwise: int = 0  # extra real ops counted by the paper-extended convention
    binary_conv: dict | None = None  # capacity info when the layer does binary MACs
    note: str = ""


# ----------------------------------------------------------------------------- counters
#
# Each counter maps (layer, node, ctx) -> _Count. Lookup walks the layer's class
# MRO, so larq's Quant* layers and the zoo's BinaryConv2D use the Keras rules.

_COUNTERS = {}


def register_counter(*classes):
    """Register a counting function for layer classes (and their subclasses)."""

    def deco(fn):
        for cls in classes:
            _COUNTERS[cls] = fn
        return fn

    return deco


def _find_counter(layer):
    for cls in type(layer).__mro__:
        if cls in _COUNTERS:
            return _COUNTERS[cls]
    return None


def _mac_count(layer, node, macs, weight, binary_input, terms):
    """Split ``macs`` into BOPs or real MACs; ``terms`` = products per output entry."""
    weight_binary = _weight_bits(weight) == 1
    if binary_input and weight_binary:
        return _Count(bops=macs, binary_conv={"terms": terms})
    note = "binary input, real weights" if binary_input else ""
    return _Count(real_macs=macs, note=note)


def _input_is_binary(layer, node):
    quantizer = getattr(layer, "input_quantizer", None)
    if quantizer is not None:
        return _precision(quantizer) == 1
    return bool(node.input_binary and node.input_binary[0])


@register_counter(tf.keras.layers.Conv1D, tf.keras.layers.Conv2D, tf.keras.layers.Conv3D)
def _count_conv(layer, node, ctx):
    kernel = layer.kernel
    macs = _size(kernel) * _spatial(node.output_shapes[0])
    terms = int(np.prod(kernel.shape.as_list()[:-1]))  # kernel window x input channels per group
    count = _mac_count(layer, node, macs, kernel, _input_is_binary(layer, node), terms)
    if count.binary_conv is not None:
        count.binary_conv.update(
            kernel=list(kernel.shape.as_list()[:-2]),
            in_channels=int(kernel.shape[-2]),
            groups=int(getattr(layer, "groups", 1)),
            out_channels=int(kernel.shape[-1]),
        )
    return count


@register_counter(
    tf.keras.layers.Conv1DTranspose, tf.keras.layers.Conv2DTranspose, tf.keras.layers.Conv3DTranspose
)
def _count_conv_transpose(layer, node, ctx):
    kernel = layer.kernel
    macs = _size(kernel) * _spatial(node.input_shapes[0])
    count = _mac_count(layer, node, macs, kernel, _input_is_binary(layer, node), None)
    if count.binary_conv is not None:  # output entries sum a varying number of terms
        count.binary_conv = None
    return count


def _depthwise_base():
    from tf_keras.src.layers.convolutional.base_depthwise_conv import DepthwiseConv

    return DepthwiseConv


def _separable_base():
    from tf_keras.src.layers.convolutional.base_separable_conv import SeparableConv

    return SeparableConv


@register_counter(_depthwise_base())
def _count_depthwise(layer, node, ctx):
    kernel = layer.depthwise_kernel
    macs = _size(kernel) * _spatial(node.output_shapes[0])
    terms = int(np.prod(kernel.shape.as_list()[:-2]))
    count = _mac_count(layer, node, macs, kernel, _input_is_binary(layer, node), terms)
    if count.binary_conv is not None:
        count.binary_conv.update(
            kernel=list(kernel.shape.as_list()[:-2]), in_channels=1, groups=int(kernel.shape[-2]),
            out_channels=int(kernel.shape[-2] * kernel.shape[-1]),
        )
    return count


@register_counter(_separable_base())
def _count_separable(layer, node, ctx):
    pixels = _spatial(node.output_shapes[0])
    dw = _mac_count(
        layer, node, _size(layer.depthwise_kernel) * pixels, layer.depthwise_kernel,
        _input_is_binary(layer, node), None,
    )
    # the depthwise output is real-valued: the pointwise part is never binary
    pw = _size(layer.pointwise_kernel) * pixels
    return _Count(bops=dw.bops, real_macs=dw.real_macs + pw, note="pointwise part real")


@register_counter(tf.keras.layers.Dense)
def _count_dense(layer, node, ctx):
    if layer in ctx["folded"]:
        return _Count(note=f"folded into {ctx['folded'][layer]} (averaged heads)")
    kernel = layer.kernel
    macs = _size(kernel) * _spatial(node.output_shapes[0])
    count = _mac_count(layer, node, macs, kernel, _input_is_binary(layer, node), int(kernel.shape[0]))
    if count.binary_conv is not None:
        count.binary_conv.update(
            kernel=[1], in_channels=int(kernel.shape[0]), groups=1, out_channels=int(kernel.shape[1])
        )
    return count


@register_counter(zl.ContextualThresholds)
def _count_contextual(layer, node, ctx):
    # GAP (free) -> e = W1 g -> alpha = W2 e, beta = W3 e: three small dense maps
    macs = _size(layer.w1) + _size(layer.w2) + _size(layer.w3)
    return _Count(real_macs=macs, note="dense W1, W2, W3")


@register_counter(zl.TokenAttention)
def _count_attention(layer, node, ctx):
    """Q K^T and P V: N M C MACs each (N query tokens, M key tokens, C channels).

    A matmul counts as BOPs when both of its operands are binary: Q K^T when the
    Q and K inputs are sign outputs, P V when the probabilities are binarised
    ({0, alpha}: one bit and a scalar scale) and V is a sign output. The softmax
    counts as FLOPs, one per attention score (heads N M), in both conventions;
    the 1/sqrt(d) scale folds into it.
    """
    q_shape, k_shape = node.input_shapes[0], node.input_shapes[1]
    n, m, c = _spatial(q_shape), _spatial(k_shape), int(q_shape[-1])
    q_bin, k_bin, v_bin = (list(node.input_binary) + [False] * 3)[:3]
    macs = n * m * c
    count = _Count(real_macs=layer.heads * n * m)
    notes = ["softmax real"]
    for label, binary in (("QK", q_bin and k_bin), ("PV", layer.binary_probs and v_bin)):
        if binary:
            count.bops += macs
            notes.append(f"{label} binary")
        else:
            count.real_macs += macs
            notes.append(f"{label} real")
    count.note = ", ".join(notes)
    return count


def _per_element(note):
    def counter(layer, node, ctx):
        return _Count(elementwise=_elements(node.output_shapes[0]), note=note)

    return counter


register_counter(tf.keras.layers.BatchNormalization)(_per_element(""))
register_counter(zl.LayerScale)(_per_element("per-channel scale and shift"))
register_counter(zl.PositionEmbedding)(_per_element("position embedding add"))
register_counter(zl.LearnableBias)(_per_element(""))
register_counter(zl.RPReLU, tf.keras.layers.PReLU)(_per_element(""))


def _from_contextual(node):
    return any(isinstance(p, zl.ContextualThresholds) for p in node.parents)


@register_counter(tf.keras.layers.Add, tf.keras.layers.Subtract)
def _count_add(layer, node, ctx):
    if _from_contextual(node):
        return _Count(note="dynamic threshold: folds into sign bias / BN shift")
    n = len(node.inputs)
    return _Count(elementwise=(n - 1) * _elements(node.output_shapes[0]))


@register_counter(tf.keras.layers.Average)
def _count_average(layer, node, ctx):
    if layer in ctx["folding_averages"]:
        return _Count(note="linear heads folded into one")
    n = len(node.inputs)
    return _Count(elementwise=n * _elements(node.output_shapes[0]))


def _free(note=""):
    def counter(layer, node, ctx):
        return _Count(note=note)

    return counter


register_counter(
    tf.keras.layers.InputLayer,
    tf.keras.layers.ZeroPadding1D, tf.keras.layers.ZeroPadding2D, tf.keras.layers.ZeroPadding3D,
    tf.keras.layers.Cropping1D, tf.keras.layers.Cropping2D, tf.keras.layers.Cropping3D,
    tf.keras.layers.Reshape, tf.keras.layers.Flatten, tf.keras.layers.Permute,
    tf.keras.layers.Concatenate, tf.keras.layers.Dropout, tf.keras.layers.SpatialDropout2D,
    tf.keras.layers.Activation, tf.keras.layers.ReLU, tf.keras.layers.Softmax,
    tf.keras.layers.MaxPooling1D, tf.keras.layers.MaxPooling2D, tf.keras.layers.MaxPooling3D,
    tf.keras.layers.AveragePooling1D, tf.keras.layers.AveragePooling2D, tf.keras.layers.AveragePooling3D,
    tf.keras.layers.GlobalAveragePooling1D, tf.keras.layers.GlobalAveragePooling2D,
    tf.keras.layers.GlobalAveragePooling3D, tf.keras.layers.GlobalMaxPooling1D,
    tf.keras.layers.GlobalMaxPooling2D, tf.keras.layers.GlobalMaxPooling3D,
    zl.ChannelTile, zl.ChannelSplit, zl.LongShortShift, zl.SymmetricMaxPool2D,
    zl.ChannelAvgPool, tf.keras.layers.UpSampling1D, tf.keras.layers.UpSampling2D,
    lq.quantizers.Quantizer,
)(_free())

# BNext: the release's unused PReLUs are identity layers (free); information
# recoupling lambda x + (1 - lambda) y costs 2 ops per output element and the SE
# / ELM products (Multiply) n - 1 per element in the paper-extended convention.
register_counter(zl.UnusedWeight)(_free("unused release weight (identity)"))


@register_counter(zl.InformationRecoupling)
def _count_recoupling(layer, node, ctx):
    return _Count(elementwise=2 * _elements(node.output_shapes[0]))


@register_counter(tf.keras.layers.Multiply)
def _count_multiply(layer, node, ctx):
    return _Count(elementwise=(len(node.inputs) - 1) * _elements(node.output_shapes[0]))


# layers whose outputs hold +-1 values when all their inputs do
_BINARY_PRESERVING = (
    zl.LongShortShift, zl.ChannelSplit, zl.ChannelTile,
    tf.keras.layers.Concatenate, tf.keras.layers.ZeroPadding2D, tf.keras.layers.Reshape,
    tf.keras.layers.Flatten, tf.keras.layers.Permute, tf.keras.layers.Cropping2D,
    tf.keras.layers.MaxPooling2D, zl.SymmetricMaxPool2D,
)


def _outputs_binary(layer, input_binary):
    if isinstance(layer, zl.RSign):
        return True
    if isinstance(layer, lq.quantizers.Quantizer):
        return _precision(layer) == 1
    if isinstance(layer, _BINARY_PRESERVING):
        return bool(input_binary) and all(input_binary)
    return False


# ----------------------------------------------------------------------------- graph walk


def _graph_nodes(model):
    """Nodes of a functional model in execution order (deepest first)."""
    if not hasattr(model, "_nodes_by_depth"):
        raise ValueError(
            f"summary needs a functional or Sequential Keras model, got {type(model).__name__} "
            "(subclassed models have no layer graph to count)"
        )
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        nodes.extend(model._nodes_by_depth[depth])
    return nodes


def _walk(model):
    """Yield _Node records in execution order with binary flags propagated."""
    binary = {}  # id(KerasTensor) -> bool
    for node in _graph_nodes(model):
        inputs = list(tf.nest.flatten(node.keras_inputs)) if not node.is_input else []
        outputs = list(tf.nest.flatten(node.outputs))
        flags = [binary.get(id(t), False) for t in inputs]
        parents = [getattr(t, "_keras_history", (None,))[0] for t in inputs]
        out_binary = _outputs_binary(node.layer, flags)
        for t in outputs:
            binary[id(t)] = out_binary
        yield _Node(node.layer, inputs, outputs, flags, parents)


def _find_folded_heads(nodes):
    """Dense heads that read one tensor and are only averaged: count one of them."""
    folded, averages = {}, set()
    consumers, node_of = {}, {}
    for n in nodes:
        node_of.setdefault(id(n.layer), n)
        for t in n.inputs:
            consumers.setdefault(id(t), []).append(n.layer)
    for n in nodes:
        if not isinstance(n.layer, tf.keras.layers.Average) or len(n.inputs) < 2:
            continue
        heads = n.parents
        if len({id(h) for h in heads}) != len(heads) or not all(_linear_dense(h) for h in heads):
            continue
        head_nodes = [node_of[id(h)] for h in heads]
        sources = {id(hn.inputs[0]) for hn in head_nodes}
        only_averaged = all(consumers.get(id(hn.outputs[0]), []) == [n.layer] for hn in head_nodes)
        if len(sources) == 1 and only_averaged:
            averages.add(n.layer)
            for h in heads[1:]:
                folded[h] = heads[0].name
    return folded, averages


def _linear_dense(layer):
    return (
        isinstance(layer, tf.keras.layers.Dense)
        and getattr(layer.activation, "__name__", "") == "linear"
        and getattr(layer, "input_quantizer", None) is None
        and getattr(layer, "kernel_quantizer", None) is None
    )


# ----------------------------------------------------------------------------- report


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: str
    bops: int | None
    flops: int | None
    params: int
    non_trainable_params: int
    binary_params: int
    memory_bits: int
    note: str = ""
    binary_conv: dict | None = field(default=None, repr=False)


def _shape_str(shapes):
    shapes = [tuple(d if d is not None else -1 for d in s[1:]) for s in shapes]
    return str(shapes[0]) if len(shapes) == 1 else " ".join(str(s) for s in shapes)


def _layer_rows(model, convention, fold_heads, on_unknown, prefix=""):
    nodes = list(_walk(model))
    folded, averages = _find_folded_heads(nodes) if fold_heads else ({}, set())
    ctx = {"folded": folded, "folding_averages": averages}
    by_layer = {}
    for n in nodes:
        by_layer.setdefault(id(n.layer), []).append(n)
    rows = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            rows.extend(_layer_rows(layer, convention, fold_heads, on_unknown, f"{prefix}{layer.name}/"))
            continue
        trainable = sum(_size(w) for w in layer.trainable_weights)
        non_trainable = sum(_size(w) for w in layer.non_trainable_weights)
        binary_params = sum(_size(w) for w in layer.weights if _weight_bits(w) == 1)
        memory = sum(_size(w) * _weight_bits(w) for w in layer.weights)
        layer_nodes = by_layer.get(id(layer), [])
        counter = _find_counter(layer)
        shapes = [s for n in layer_nodes[:1] for s in n.output_shapes]
        row = LayerRow(
            f"{prefix}{layer.name}", type(layer).__name__, _shape_str(shapes) if shapes else "-",
            0, 0, trainable, non_trainable, binary_params, memory,
        )
        if counter is None:
            if on_unknown == "raise":
                raise ValueError(
                    f"layer {row.name!r} of class {type(layer).__module__}.{type(layer).__name__} "
                    "is not known to the operation counter; register a counter with "
                    "larq_esbnn.report.register_counter or pass on_unknown='report'"
                )
            row.bops = row.flops = None
            row.note = "unknown: not counted"
            rows.append(row)
            continue
        notes = []
        for n in layer_nodes:
            c = counter(layer, n, ctx)
            row.bops += c.bops
            row.flops += c.real_macs + (c.elementwise if convention == "paper-extended" else 0)
            if c.note:
                notes.append(c.note)
            if c.binary_conv is not None:
                row.binary_conv = c.binary_conv
        row.note = "; ".join(dict.fromkeys(notes))
        rows.append(row)
    return rows


def _fmt(x):
    return "unknown" if x is None else f"{x:,}"


def _print_table(rows, totals, print_fn):
    header = ["Layer", "Type", "Output", "BOPs", "FLOPs", "Trainable", "Non-train.", "Binary", "Memory (B)", "Note"]
    table = [header]
    for r in rows:
        table.append([
            r.name, r.type, r.output_shape, _fmt(r.bops), _fmt(r.flops), _fmt(r.params),
            _fmt(r.non_trainable_params), _fmt(r.binary_params), f"{r.memory_bits / 8:,.0f}", r.note,
        ])
    table.append([
        "Total", "", "", _fmt(totals["bops"]), _fmt(totals["flops"]), _fmt(totals["params"]),
        _fmt(totals["non_trainable_params"]), _fmt(totals["binary_params"]),
        f"{totals['memory_bytes']:,}", "",
    ])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    right = {3, 4, 5, 6, 7, 8}

    def line(row):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    print_fn(line(header))
    print_fn(rule)
    for row in table[1:-1]:
        print_fn(line(row))
    print_fn(rule)
    print_fn(line(table[-1]))


def _larq_profile(model):
    """Totals from larq's own profiler (None where larq cannot count a layer)."""
    try:
        profile = lq.models.ModelProfile(model)
        return {
            "binary_macs": int(profile.op_count("mac", 1)),
            "real_macs": int(profile.op_count("mac", 32)),
            "memory_bytes": int(math.ceil(profile.memory / 8)),
            "params": int(profile.weight_count()),
        }
    except Exception as err:  # larq's profiler is not ours to fix; report why it failed
        return {"error": f"{type(err).__name__}: {err}"}


def summary(
    model,
    print_fn=print,
    *,
    convention="default",
    fold_heads=True,
    on_unknown="raise",
    larq_summary=True,
):
    """Per-layer BOPs / FLOPs / parameters / memory of a Keras model, and totals.

    Arguments:
        model: a functional or Sequential Keras model with static input shape.
        print_fn: called with each line of the table (``None``: print nothing).
        convention: ``"default"`` (MACs only, BCDNet Table 1's main figures) or
            ``"paper-extended"`` (also per-element BN / bias / RPReLU / add work,
            the table's second figures); see the module docstring.
        fold_heads: count dense heads that are only averaged as one head.
        on_unknown: ``"raise"`` (ValueError naming the layer class) or
            ``"report"`` (row marked unknown, listed in ``unknown_layers``,
            left out of the totals).
        larq_summary: also print ``larq.models.summary`` and add larq's own
            totals under the ``"larq"`` key.

    Returns a JSON-serialisable dict with ``params`` (trainable),
    ``non_trainable_params``, ``total_params``, ``binary_params``, ``bops``,
    ``flops``, ``ops`` (= bops / 64 + flops), ``memory_bytes``, ``layers`` and
    ``unknown_layers``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if on_unknown not in ("raise", "report"):
        raise ValueError(f"on_unknown must be 'raise' or 'report', got {on_unknown!r}")
    rows = _layer_rows(model, convention, fold_heads, on_unknown)
    known = [r for r in rows if r.bops is not None]
    bops = sum(r.bops for r in known)
    flops = sum(r.flops for r in known)
    memory_bits = sum(r.memory_bits for r in rows)
    result = {
        "model": model.name,
        "input_shape": [d for d in model.input_shape[1:]] if not isinstance(model.input_shape, list) else None,
        "convention": convention,
        "fold_heads": bool(fold_heads),
        "params": sum(r.params for r in rows),
        "non_trainable_params": sum(r.non_trainable_params for r in rows),
        "total_params": sum(r.params + r.non_trainable_params for r in rows),
        "binary_params": sum(r.binary_params for r in rows),
        "bops": bops,
        "flops": flops,
        "ops": bops / 64 + flops,
        "memory_bytes": int(math.ceil(memory_bits / 8)),
        "unknown_layers": [r.name for r in rows if r.bops is None],
        "layers": [{k: v for k, v in asdict(r).items() if k != "binary_conv"} for r in rows],
    }
    if larq_summary:
        result["larq"] = _larq_profile(model)
    if print_fn is not None:
        print_fn(f"Model: {model.name}   (convention: {convention})")
        _print_table(rows, result, print_fn)
        print_fn(
            f"BOPs {bops:.4e}   FLOPs {flops:.4e}   OPs = BOPs/64 + FLOPs = {result['ops']:.4e}"
        )
        print_fn(
            f"params: trainable {result['params']:,}, non-trainable {result['non_trainable_params']:,}, "
            f"binary {result['binary_params']:,}; memory {result['memory_bytes'] / 2**20:.2f} MiB "
            "(1 bit per binary weight, 32 per real one)"
        )
        if result["unknown_layers"]:
            print_fn(f"WARNING: totals leave out unknown layers: {', '.join(result['unknown_layers'])}")
        if larq_summary:
            print_fn("")
            print_fn("larq.models.summary:")
            try:
                lq.models.summary(model, print_fn=print_fn)
            except Exception as err:
                print_fn(f"  (larq.models.summary failed: {type(err).__name__}: {err})")
    return result


# ----------------------------------------------------------------------------- capacity


def _logical_name(name):
    """Per-group convs ``b3_conv1_g0``, ``_g1`` ... share the logical name ``b3_conv1``."""
    return re.sub(r"_g\d+$", "", name)


def capacity(model):
    """Representation capacity of every binary conv / dense layer.

    Returns one dict per layer doing binary MACs: ``layer``, ``logical``
    (name without the ``_g<i>`` group suffix), ``kernel``, ``in_channels``
    (per group, the conv's actual input width, so ``C_in * tau`` with ES),
    ``groups``, ``out_channels``, ``terms`` (products summed per output entry)
    and ``values`` = ``terms + 1`` (a sum of ``n`` +-1 terms takes the values
    ``-n, -n + 2, ..., n``).
    """
    rows = []
    for r in _layer_rows(model, "default", True, "report"):
        if r.binary_conv is None:
            continue
        info = r.binary_conv
        rows.append({
            "layer": r.name,
            "logical": _logical_name(r.name),
            "kernel": info.get("kernel"),
            "in_channels": info.get("in_channels"),
            "groups": info.get("groups", 1),
            "out_channels": info.get("out_channels"),
            "terms": info["terms"],
            "values": info["terms"] + 1,
        })
    return rows


def _logical_rows(rows):
    merged = {}
    for r in rows:
        merged.setdefault(r["logical"], r)
    return merged


def plot_capacity(rows_by_model, path):
    """Bar chart of distinct output values per binary layer, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows_by_model)
    merged = {m: _logical_rows(rows) for m, rows in rows_by_model.items()}
    order = []
    for m in names:
        order.extend(k for k in merged[m] if k not in order)
    x = np.arange(len(order))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(order) + 2), 5))
    for i, m in enumerate(names):
        heights = [merged[m][k]["values"] if k in merged[m] else 0 for k in order]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, heights, width, label=m)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(order, rotation=90, fontsize=7)
    ax.set_ylabel("distinct values of one output entry (C_in k^2 + 1)")
    ax.set_title("Representation capacity per binary layer: " + " vs ".join(names))
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI


def _build(name, input_size=None, weights=None):
    kwargs = {}
    if input_size is not None:
        if input_size < 1:
            raise ValueError(f"--input-size must be a positive integer, got {input_size}")
        kwargs["input_shape"] = (input_size, input_size, 3)
    if weights is not None:
        kwargs["weights"] = weights
    try:
        return models.get(name, **kwargs)
    except ImportError as err:
        raise ValueError(f"cannot load weights {weights!r} for {name}: {err}") from err


def _cmd_models(args):
    names = models.names(args.pattern)
    if not names:
        raise ValueError(f"no registered model matches {args.pattern!r}; registered: {', '.join(models.names())}")
    rows = []
    for i, name in enumerate(names, 1):
        e = models.entry(name)
        row = {"name": name, "description": e.description, "input_size": e.input_size, "binary": e.binary}
        if args.count:  # builds every model: seconds each at 224 px
            print(f"[{i}/{len(names)}] counting {name}", file=sys.stderr, flush=True)
            s = summary(_build(name), print_fn=None, larq_summary=False)
            row.update(params=s["params"], bops=s["bops"], flops=s["flops"], ops=s["ops"])
            tf.keras.backend.clear_session()
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return 0
    w = max(len(r["name"]) for r in rows)
    counts = f"  {'params':>11}  {'BOPs':>9}  {'OPs':>9}" if args.count else ""
    print(f"{'name':<{w}}  {'input':>5}{counts}  description")
    for r in rows:
        counts = f"  {r['params']:>11,}  {r['bops']:>9.3e}  {r['ops']:>9.3e}" if args.count else ""
        print(f"{r['name']:<{w}}  {r['input_size']:>5}{counts}  {r['description']}")
    return 0


def _cmd_summary(args):
    model = _build(args.model, args.input_size, args.weights)
    if args.json:
        result = summary(
            model, print_fn=None, convention=args.convention, fold_heads=not args.no_fold_heads,
            on_unknown="report" if args.allow_unknown else "raise",
        )
        print(json.dumps(result))
    else:
        summary(
            model, convention=args.convention, fold_heads=not args.no_fold_heads,
            on_unknown="report" if args.allow_unknown else "raise",
            larq_summary=not args.no_larq,
        )
    return 0


def _cmd_capacity(args):
    names = [args.model] + ([args.compare] if args.compare else [])
    rows_by_model = {}
    for name in names:
        rows_by_model[name] = capacity(_build(name, args.input_size))
        tf.keras.backend.clear_session()
    if args.plot:
        plot_capacity(rows_by_model, args.plot)
    if args.json:
        print(json.dumps({"models": rows_by_model, "plot": args.plot}))
        return 0
    merged = {m: _logical_rows(rows) for m, rows in rows_by_model.items()}
    order = []
    for m in names:
        order.extend(k for k in merged[m] if k not in order)
    w = max([len(k) for k in order] + [5])
    head = f"{'layer':<{w}}" + "".join(f"  {m + ' terms':>22}  {'values':>8}" for m in names)
    print(head)
    for k in order:
        cells = []
        for m in names:
            r = merged[m].get(k)
            cells.append(f"  {r['terms'] if r else '-':>22}  {r['values'] if r else '-':>8}")
        print(f"{k:<{w}}" + "".join(cells))
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def add_commands(sub):
    p = sub.add_parser("models", help="list registered models (--count: parameters and BOPs)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.add_argument("--count", action="store_true",
                   help="also count parameters, BOPs and OPs (builds every model: about a minute for all)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("summary", help="per-layer BOPs / FLOPs / params / memory of a model")
    p.add_argument("model", help="registered model name (see `larq-esbnn models`)")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's)")
    p.add_argument("--weights", default=None, help="weights tag or file to load (counts do not depend on it)")
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--convention", choices=CONVENTIONS, default="default")
    p.add_argument("--no-fold-heads", action="store_true", help="count averaged dense heads separately")
    p.add_argument("--allow-unknown", action="store_true", help="mark unknown layers instead of failing")
    p.add_argument("--no-larq", action="store_true", help="do not print larq.models.summary")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("capacity", help="representation capacity of every binary layer")
    p.add_argument("model")
    p.add_argument("--compare", default=None, help="second model to compare layer by layer")
    p.add_argument("--plot", default=None, help="write a bar chart (PNG) to this path")
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's)")
    p.set_defaults(func=_cmd_capacity)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="larq_esbnn.report")
    add_commands(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.func(ns))
