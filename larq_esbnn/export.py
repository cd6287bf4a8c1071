"""Deployment: LCE export, flatbuffer inspection, Keras/LCE agreement and latency.

``export_tflite`` converts a Keras model with Larq Compute Engine; a binary
convolution becomes an ``LceBconv2d`` op only if the converter sees a sign-like
input quantizer directly in front of a conv whose kernel is +-1 up to one scale
per output channel. :func:`check_export` counts those ops in the flatbuffer
against :func:`expected_bconv_count` and names every binary layer that fell
back to a float ``CONV_2D``.

How the zoo's layers convert (LCE 0.16, target "arm", x86 interpreter;
measured in ``tests/test_export.py``):

- ``BinaryConv2D`` 'same' with pad value 0 or 1 at stride 1: one ``LceBconv2d``.
- stride 2 with ``symmetric=True`` (PyTorch padding): ``REVERSE_V2`` ->
  ``LceQuantize`` -> ``LceBconv2d`` -> ``REVERSE_V2``; the flips stay outside the
  sign/conv pair, so the conv stays binary and the output equals Keras.
- ES tiling after a binary conv: ``LceBconv2d`` -> ``TILE`` -> ``MUL`` (+ ``ADD``):
  the BN is no longer fused into the bconv output transform.
- G (split -> per-group convs -> concat): one ``LceBconv2d`` per group.
- BCDNet shifts with circular padding (roll of the real-valued tensor before
  the sign, ``SLICE``/``CONCATENATION`` in TFLite): three ``LceBconv2d`` per
  shift block. ``shift_padding="zero"`` binarises before the shift, so those
  two convs per block stay float (``CONV_2D``) by design; they are reported,
  not counted as failures.
- ContextualThresholds (BCDNet-B): alpha is subtracted in front of the sign
  and beta added after the conv, so the conv stays binary.

Two LCE 0.16 pitfalls (correct op counts, wrong numbers; see :func:`lce_hazards`):

- ``ZeroPadding2D(p) -> Conv2D(2p+1, strides=2, 'valid')`` on an even size (the
  real-valued stems) is fused into a 'same' conv, which pads (p-1, p) instead
  of (p, p). :func:`optimize_for_inference` rewrites the pair exactly as
  flip -> 'same' conv with flipped kernel -> flip; the CLI applies it.
- the optimised bconv kernel gets zero padding wrong when the input map is
  smaller than the kernel (2x2 or 1x1 under a 3x3 kernel, i.e. ImageNet models
  fed less than 96x96); the reference kernel and pad value 1 are right.
"""

import argparse
import collections
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import tarfile
import time
import warnings

import numpy as np
import tensorflow as tf

from larq_esbnn import (
    detection,  # noqa: F401  (registers the detectors, so they count and export)
    models,
)
from larq_esbnn.errors import (
    BadArgument,
    BadData,
    check_new_output,
    non_negative_int,
    positive_int,
)
from larq_esbnn.models.common import walk_layers
from larq_esbnn.util import IMAGENET_MEAN, IMAGENET_STD, atomic_path, decode_image

BCONV_OP = "LceBconv2d"
REFERENCE_MODELS = ("quicknet", "mobilenet_v2", "resnet50")
_REFERENCE_DESCRIPTIONS = {
    "quicknet": "larq-zoo QuickNet (binary, LCE)",
    "mobilenet_v2": "Keras MobileNetV2 1.0 (float32, plain TFLite)",
    "resnet50": "Keras ResNet50 (float32, plain TFLite)",
}
# ImageNet mean / std in 0..255 units: the input convention of the zoo's checkpoints
_MEAN = np.array(IMAGENET_MEAN, np.float32) * 255.0
_STD = np.array(IMAGENET_STD, np.float32) * 255.0


# --------------------------------------------------------------------------- export


def _frozen_graph_def(func):
    """The GraphDef of ``func`` with its variables replaced by constants.

    ``convert_variables_to_constants_v2`` builds this GraphDef and then imports it
    back into a new concrete function, which the converter does not need; with the
    pure-Python protobuf of the pinned stack that import is about half of a
    conversion (BCDNet-A: 45 s -> 24 s, byte-identical flatbuffers; measured here).
    The public route is the fallback should TensorFlow's internals move."""
    from tensorflow.python.framework import convert_to_constants as c2c

    try:
        data = c2c._FunctionConverterDataInEager(func=func, lower_control_flow=False, aggressive_inlining=False)
        graph_def, _ = c2c._replace_variables_by_constants(converter_data=data)
        return graph_def
    except AttributeError:  # pragma: no cover - another TensorFlow version
        return c2c.convert_variables_to_constants_v2(func, lower_control_flow=False).graph.as_graph_def()


def _convert_frozen_graph(model):
    """LCE's own graph-def route (what ``convert_keras_model`` falls back to),
    without the SavedModel round trip that dominates conversion time."""
    from larq_compute_engine.mlir.python import converter as lce_converter

    func = lce_converter.concrete_function_from_keras_model(model)
    inputs = [t for t in func.inputs if t.dtype != tf.resource]
    shapes = []
    for t in inputs:
        shape = t.shape.as_list()
        if None in shape[1:]:
            raise ValueError(f"input {t.name} has a dynamic shape {shape}; give the model a static input_shape")
        shapes.append([1] + shape[1:])
    return lce_converter.convert_graphdef_to_tflite_flatbuffer(
        _frozen_graph_def(func).SerializeToString(),
        [lce_converter.get_tensor_name(t) for t in inputs],
        [lce_converter.DataType.Name(t.dtype.as_datatype_enum) for t in inputs],
        shapes,
        [lce_converter.get_tensor_name(t) for t in func.outputs],
        False,
        "arm",
        None,
    )


def export_tflite(model, path=None, *, fast=False):
    """Convert ``model`` to an LCE flatbuffer (target "arm"); write it to ``path`` if given.

    ``fast=False`` uses ``larq_compute_engine.convert_keras_model`` (SavedModel
    export, then conversion). ``fast=True`` freezes the Keras graph and hands it
    to the same LCE converter directly (the route ``convert_keras_model`` itself
    falls back to): same ops, 5-10x quicker because no SavedModel is written.
    Returns the flatbuffer bytes.
    """
    if not isinstance(model, tf.keras.Model):
        raise ValueError(f"export_tflite needs a tf.keras.Model, got {type(model).__name__}")
    if fast:
        fb = _convert_frozen_graph(model)
    else:
        import larq_compute_engine as lce

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fb = lce.convert_keras_model(model)
    fb = bytes(fb)
    if path is not None:
        pathlib.Path(path).write_bytes(fb)
    return fb


def export_float_tflite(model):
    """Plain TFLite conversion (no LCE ops, no quantisation) for float reference models."""
    func = tf.function(lambda x: model(x, training=False))
    concrete = func.get_concrete_function(
        tf.TensorSpec([1] + list(model.input_shape[1:]), tf.float32)
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    return bytes(converter.convert())


# ----------------------------------------------------------------------- inspection


def _builtin_names():
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def flatbuffer_ops(fb):
    """Every operator of the main subgraph as ``(op name, [output tensor names])``."""
    from tensorflow.lite.python import schema_py_generated as schema

    if not isinstance(fb, (bytes, bytearray)) or len(fb) < 8 or bytes(fb[4:8]) != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (expected bytes with the 'TFL3' identifier)")
    model = schema.ModelT.InitFromPackedBuf(bytearray(fb), 0)
    names = _builtin_names()
    ops = []
    for subgraph in model.subgraphs[:1]:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if code.customCode:
                name = code.customCode.decode()
            else:
                value = max(code.builtinCode, code.deprecatedBuiltinCode)
                name = names.get(value, f"BUILTIN_{value}")
            outputs = [subgraph.tensors[i].name.decode() for i in op.outputs if i >= 0]
            ops.append((name, outputs))
    return ops


def inspect_flatbuffer(fb):
    """Op counts of a TFLite/LCE flatbuffer: ``{"LceBconv2d": 18, "CONV_2D": 3, ...}``
    (in order of first appearance)."""
    return dict(collections.Counter(name for name, _ in flatbuffer_ops(fb)))


def _is_binary(quantizer):
    if quantizer is None:
        return False
    return getattr(quantizer, "precision", None) == 1 or getattr(quantizer, "__name__", "") in (
        "ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign",
    )


def binary_conv_layers(model):
    """Split the model's larq convs with a binary kernel into two name lists:
    ``(convertible, float_by_design)``. Convertible = a sign-like input quantizer
    is set (LCE makes an ``LceBconv2d``); float by design = no input quantizer
    (the zoo's zero-padding shift binarises in a separate layer before the shift)
    or a real-valued kernel (step 1 of the two-step recipe)."""
    import larq as lq

    convertible, floating = [], []
    for layer in walk_layers(model):
        if not isinstance(layer, lq.layers.QuantConv2D):
            continue
        has_input = _is_binary(layer.input_quantizer)
        has_kernel = _is_binary(layer.kernel_quantizer)
        if has_input and has_kernel:
            convertible.append(layer.name)
        elif has_input or has_kernel:
            floating.append(layer.name)
    return convertible, floating


def expected_bconv_count(model):
    """Number of binary convs LCE should turn into ``LceBconv2d``: larq convs (the
    zoo's ``BinaryConv2D``) with a sign input quantizer and a binary kernel."""
    return len(binary_conv_layers(model)[0])


def _mentions(tensor_names, layer_name):
    key = f"/{layer_name}/"
    return any(key in "/" + part for full in tensor_names for part in full.split(";"))


@dataclasses.dataclass
class ExportCheck:
    """Result of :func:`check_export`."""

    expected: int
    found: int
    fallbacks: list  # binary layers expected binary but converted to float ops
    float_by_design: list  # binary-kernel layers without a sign input (stay float)
    op_counts: dict
    warnings: list = dataclasses.field(default_factory=list)  # see lce_hazards

    @property
    def ok(self):
        return self.found == self.expected and not self.fallbacks

    def format(self):
        lines = [
            f"{BCONV_OP}: {self.found} found, {self.expected} expected -> "
            + ("OK" if self.ok else "MISMATCH")
        ]
        if self.fallbacks:
            lines.append(f"binary layers that fell back to float: {', '.join(self.fallbacks)}")
        if self.float_by_design:
            lines.append(
                f"float by design ({len(self.float_by_design)} binary-kernel convs without a "
                f"sign input quantizer): {', '.join(self.float_by_design)}"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _bconv_signatures(fb):
    """Per LceBconv2d op: (C_out, kh, kw) of its filter and the tensor names around it
    (its output and the LceQuantize output feeding it)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(fb), 0)
    graph = model.subgraphs[0]
    producer = {}
    for op in graph.operators:
        for i in op.outputs:
            producer[i] = op
    result = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if not code.customCode or code.customCode.decode() != BCONV_OP:
            continue
        shape = tuple(int(d) for d in graph.tensors[op.inputs[1]].shape)
        names = [graph.tensors[i].name.decode() for i in op.outputs]
        feeding = producer.get(op.inputs[0])
        if feeding is not None:
            names += [graph.tensors[i].name.decode() for i in feeding.outputs]
        result.append((shape[:3], names))
    return result


def check_export(model, fb):
    """Compare the ``LceBconv2d`` ops of ``fb`` with the model's binary convs.

    Layers are matched to ops by filter shape (C_out, kh, kw); where a shape has
    fewer ops than layers, the layers whose name does not appear in the tensor
    names around any bconv (the converter keeps the Keras layer scope, cut to
    ~50 characters) are listed in ``fallbacks`` (all layers of that shape if the
    names do not tell).
    """
    ops = flatbuffer_ops(fb)
    convertible, floating = binary_conv_layers(model)
    layers = {layer.name: layer for layer in walk_layers(model)}
    bconvs = _bconv_signatures(fb)
    found_by_sig = collections.Counter(sig for sig, _ in bconvs)
    bconv_names = [n for _, names in bconvs for n in names]
    by_sig = collections.defaultdict(list)
    for name in convertible:
        layer = layers[name]
        by_sig[(int(layer.filters), *map(int, layer.kernel_size))].append(name)
    fallbacks = []
    for sig, names in by_sig.items():
        deficit = len(names) - found_by_sig.get(sig, 0)
        if deficit <= 0:
            continue
        unnamed = [n for n in names if not _mentions(bconv_names, n)]
        fallbacks += unnamed if len(unnamed) >= deficit else names
    return ExportCheck(
        expected=len(convertible),
        found=len(bconvs),
        fallbacks=sorted(fallbacks, key=convertible.index),
        float_by_design=floating,
        op_counts=dict(collections.Counter(name for name, _ in ops)),
        warnings=lce_hazards(model),
    )


def lce_hazards(model):
    """Patterns that convert to the expected ops but compute wrong outputs in LCE 0.16
    (measured on x86 against Keras; see the module docstring):

    - ``ZeroPadding2D(p) -> stride-2 Conv2D(2p+1)`` on even sizes: the converter
      fuses it into a 'same' conv that pads (p-1, p). :func:`optimize_for_inference`
      rewrites it exactly.
    - a binary conv with pad value 0 whose input is smaller than its kernel
      (e.g. 2x2 or 1x1 maps in ImageNet models below 96x96 input): the optimised
      bconv kernel gets the zero-padding correction wrong (the reference kernel,
      ``use_reference_bconv=True``, and pad value 1 are right).
    """
    import larq as lq

    found = []
    pairs = _symmetric_stride2_pairs(model)
    if pairs:
        found.append(
            "ZeroPadding2D -> stride-2 conv on an even size (LCE fuses it into a wrongly "
            f"padded 'same' conv): {', '.join(pairs.values())}; export "
            "optimize_for_inference(model) instead"
        )
    small = []
    for layer in walk_layers(model):
        if not isinstance(layer, lq.layers.QuantConv2D) or layer.padding != "same":
            continue
        if float(getattr(layer, "pad_values", 0.0)) != 0.0 or max(layer.kernel_size) == 1:
            continue
        h, w = layer.input_shape[1:3]
        if h is not None and (h < layer.kernel_size[0] or w < layer.kernel_size[1]):
            small.append(f"{layer.name} ({h}x{w})")
    if small:
        found.append(
            "zero-padded binary convs on maps smaller than the kernel (LCE's optimised "
            "bconv kernel is wrong there; use a larger input or pad value 1): "
            + ", ".join(small)
        )
    return found


# ------------------------------------------------------------- inference rewrite


@tf.keras.utils.register_keras_serializable(package="larq_esbnn_export")
class FlippedSameConv2D(tf.keras.layers.Conv2D):
    """Stride-2 conv with PyTorch-style symmetric padding ``p = (k - 1) / 2`` on even
    sizes, written as flip -> TF 'same' conv with a spatially flipped kernel -> flip.

    Replaces ``ZeroPadding2D(p) -> Conv2D(k, strides=2, 'valid')``: LCE's
    fuse-padding pass turns that pair into a 'same' conv, which pads (p - 1, p)
    instead of (p, p) on even inputs and gives wrong outputs. The variables are
    those of the replaced conv (same shapes, same order).
    """

    def call(self, inputs):
        flipped = tf.reverse(inputs, [1, 2])
        kernel = tf.reverse(self.kernel, [0, 1])
        y = tf.nn.conv2d(flipped, kernel, self.strides, "SAME", dilations=self.dilation_rate)
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        if self.activation is not None:
            y = self.activation(y)
        return tf.reverse(y, [1, 2])


def _symmetric_stride2_pairs(model):
    """``{pad layer name: conv layer name}`` for every ZeroPadding2D(p) feeding only a
    'valid' stride-2 Conv2D with kernel 2p+1 on an even-sized input: the pairs
    LCE converts wrongly."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, tf.keras.layers.ZeroPadding2D):
            continue
        consumers = [n.outbound_layer for n in layer.outbound_nodes]
        if len(consumers) != 1 or type(consumers[0]) is not tf.keras.layers.Conv2D:
            continue
        conv = consumers[0]
        (top, bottom), (left, right) = layer.padding
        h, w = layer.input_shape[1:3]
        if not (top == bottom == left == right and conv.padding == "valid"
                and tuple(conv.strides) == (2, 2) and tuple(conv.dilation_rate) == (1, 1)
                and tuple(conv.kernel_size) == (2 * top + 1, 2 * top + 1)
                and h is not None and w is not None and h % 2 == 0 and w % 2 == 0):
            continue
        pairs[layer.name] = conv.name
    return pairs


def optimize_for_inference(model):
    """An equivalent Keras model that LCE converts exactly (same outputs, same weights).

    Rewrites every ``ZeroPadding2D(p) -> stride-2 Conv2D(2p+1, 'valid')`` pair on
    even sizes (the ReActNet-A / BCDNet stems, the ReActNet-18 7x7 stem) into an
    identity layer (keeping the pad layer's name) and a
    :class:`FlippedSameConv2D`. Returns ``model`` itself if nothing applies.
    """
    pairs = _symmetric_stride2_pairs(model)
    if not pairs:
        return model
    convs = set(pairs.values())

    def clone(layer):
        config = layer.get_config()
        if layer.name in pairs:
            return tf.keras.layers.Activation("linear", name=layer.name)
        if layer.name in convs:
            config["padding"] = "same"
            return FlippedSameConv2D.from_config(config)
        return layer.__class__.from_config(config)

    new = tf.keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights:
            new.get_layer(layer.name).set_weights(layer.get_weights())
    return new


# ------------------------------------------------------------------ interpreting


def lce_interpreter(fb, num_threads=1, use_xnnpack=False):
    """LCE's interpreter (TFLite with the LCE ops), optimised bconv kernels.

    Grouped binary convs would need ``use_indirect_bgemm=True``; the zoo writes
    groups as separate convs, so it is off."""
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    if int(num_threads) < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads!r}")
    return Interpreter(
        fb, num_threads=int(num_threads), use_reference_bconv=False, use_xnnpack=use_xnnpack
    )


def lce_predict(fb, images, num_threads=1):
    """Run the flatbuffer on ``images`` (N, H, W, C) one image at a time."""
    return np.asarray(lce_interpreter(fb, num_threads).predict(np.asarray(images, np.float32)))


def agreement(model, images, labels=None, fb=None, num_threads=1, atol=1e-4):
    """Top-1 agreement of Keras and LCE on ``images`` (already preprocessed).

    Returns a dict: ``n``; ``top1_agreement`` (fraction of images where both
    pick the same class); ``max_abs_logit_diff``; ``exact_fraction`` (images
    whose logits all agree within ``atol``: the rest had a pre-sign value so
    close to 0 that float rounding binarised it differently, which moves the
    logits of that image by a multiple of a kernel scale); with ``labels`` also
    ``keras_top1`` / ``lce_top1``. ``fb`` defaults to a fresh export.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    if fb is None:
        fb = export_tflite(model, fast=True)
    keras_out = np.asarray(model.predict(images, batch_size=32, verbose=0))
    lce_out = lce_predict(fb, images, num_threads)
    if keras_out.shape != lce_out.shape:
        raise ValueError(f"Keras output {keras_out.shape} and LCE output {lce_out.shape} differ in shape")
    k_top, l_top = keras_out.argmax(-1), lce_out.argmax(-1)
    per_image = np.abs(keras_out - lce_out).reshape(len(images), -1).max(axis=1)
    result = {
        "n": int(len(images)),
        "top1_agreement": float(np.mean(k_top == l_top)),
        "max_abs_logit_diff": float(per_image.max()),
        "exact_fraction": float(np.mean(per_image <= atol)),
    }
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        result["keras_top1"] = float(np.mean(k_top == labels))
        result["lce_top1"] = float(np.mean(l_top == labels))
    return result


def load_images(path, limit=100, size=None):
    """Up to ``limit`` images from ``DIR/<class>/*.jpg`` or a ``.tar.gz`` of that layout
    (e.g. the CIFAR-10 ``test.tar.gz`` that ``larq-esbnn train --data`` also reads), taken round-robin over the
    sorted class folders; resized to ``size`` if given and normalised with the
    ImageNet mean/std in 0..255 units. Returns ``(images, labels, class_names)``."""
    path = pathlib.Path(path)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit!r}")
    by_class = collections.defaultdict(list)
    exts = (".jpg", ".jpeg", ".png", ".bmp")
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.suffix.lower() in exts:
                by_class[f.parent.name].append(f.read_bytes)
        archive = None
    elif path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        archive = tarfile.open(path)
        for member in archive:
            if member.isfile() and member.name.lower().endswith(exts):
                parent = pathlib.PurePosixPath(member.name).parent.name
                by_class[parent].append(member)
    else:
        raise FileNotFoundError(f"no image folder or .tar.gz archive at {path}")
    classes = sorted(by_class)
    if not classes:
        raise ValueError(f"no images ({', '.join(exts)}) found in {path}")
    chosen = []
    for i in range(max(len(v) for v in by_class.values())):
        for label, name in enumerate(classes):
            if i < len(by_class[name]) and len(chosen) < limit:
                chosen.append((by_class[name][i], label))
    images = []
    for item, _ in chosen:
        data = archive.extractfile(item).read() if archive is not None else item()
        try:
            image = decode_image(data)
        except tf.errors.InvalidArgumentError:
            name = item.name if archive is not None else item.__self__
            raise BadData(f"{name} in {path} is not an image file (JPEG, PNG, BMP or GIF)") from None
        if size is not None:
            image = tf.image.resize(image, (size, size))
        images.append(image.numpy().astype(np.float32))
    if archive is not None:
        archive.close()
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images in {path} have different sizes {sorted(shapes)[:3]}; pass size")
    images = (np.stack(images) - _MEAN) / _STD
    return images.astype(np.float32), np.array([lab for _, lab in chosen]), classes


# -------------------------------------------------------------------- benchmark


def _fast_export(model):
    return export_tflite(model, fast=True)


def build_benchmark_model(name, input_size=None, **kwargs):
    """A zoo model (registry name) or a reference row (``quicknet``,
    ``mobilenet_v2``, ``resnet50``), randomly initialised unless ``weights`` is
    given. Returns ``(keras model, flatbuffer converter)``."""
    if name in REFERENCE_MODELS:
        size = input_size or 224
        shape = (size, size, 3)
        if name == "quicknet":
            import larq_zoo

            return larq_zoo.sota.QuickNet(input_shape=shape, weights=None), _fast_export
        app = {"mobilenet_v2": tf.keras.applications.MobileNetV2,
               "resnet50": tf.keras.applications.ResNet50}[name]
        return app(input_shape=shape, weights=None), export_float_tflite
    entry = models.entry(name)
    size = input_size or entry.input_size
    model = models.get(name, input_shape=(size, size, 3), **kwargs)
    return optimize_for_inference(model), _fast_export


def time_interpreters(interpreters, runs=50, warmup=3, seed=0):
    """Latency in ms of one single-image inference per interpreter.

    The interpreters run round-robin (run ``r`` of every model before run
    ``r+1`` of any), so load from other processes hits every row alike.
    Returns ``{key: [ms, ...]}``.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs!r}")
    rng = np.random.default_rng(seed)
    inputs = {}
    for key, ip in interpreters.items():
        shape = [1] + list(ip.input_shapes[0][1:])
        inputs[key] = [rng.standard_normal(shape).astype(np.float32)]
    for _ in range(warmup):
        for key, ip in interpreters.items():
            ip.interpreter.predict(inputs[key])
    times = {key: [] for key in interpreters}
    for _ in range(runs):
        for key, ip in interpreters.items():
            start = time.perf_counter()
            ip.interpreter.predict(inputs[key])
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def benchmark(names, threads=1, runs=50, warmup=3, input_size=None, references=True,
              base=None, use_xnnpack=False, log=None):
    """Convert every model and time it in one round-robin run.

    Returns a list of row dicts (name, kind, input size, ops, bconvs, size_bytes,
    min_ms, median_ms, ratios to ``base``); ``base`` defaults to the first name.
    """
    names = list(dict.fromkeys(names))
    if references:
        names += [r for r in REFERENCE_MODELS if r not in names]
    if not names:
        raise ValueError("benchmark needs at least one model name")
    base = base or names[0]
    if base not in names:
        raise ValueError(f"base {base!r} is not one of the benchmarked models: {', '.join(names)}")
    rows, interpreters = {}, {}
    for name in names:
        start = time.perf_counter()
        model, convert = build_benchmark_model(name, input_size)
        fb = convert(model)
        counts = inspect_flatbuffer(fb)
        rows[name] = {
            "model": name,
            "description": _REFERENCE_DESCRIPTIONS.get(name, ""),
            "input_size": int(model.input_shape[1]),
            "size_bytes": len(fb),
            "bconv_ops": counts.get(BCONV_OP, 0),
            "expected_bconv": expected_bconv_count(model),
            "float_conv_ops": counts.get("CONV_2D", 0) + counts.get("DEPTHWISE_CONV_2D", 0),
            "params": int(model.count_params()),
        }
        interpreters[name] = lce_interpreter(fb, threads, use_xnnpack)
        if log:
            log(f"converted {name} in {time.perf_counter() - start:.1f} s ({len(fb) / 1e6:.2f} MB)")
        del model
        tf.keras.backend.clear_session()
    times = time_interpreters(interpreters, runs, warmup)
    for name in names:
        rows[name]["min_ms"] = min(times[name])
        rows[name]["median_ms"] = statistics.median(times[name])
    for name in names:
        rows[name]["min_ratio"] = rows[name]["min_ms"] / rows[base]["min_ms"]
        rows[name]["median_ratio"] = rows[name]["median_ms"] / rows[base]["median_ms"]
        rows[name]["base"] = base
    return [rows[n] for n in names]


def format_table(rows):
    """Markdown table of :func:`benchmark` rows."""
    base = rows[0]["base"] if rows else ""
    lines = [
        f"| model | input | LceBconv2d | float convs | size (MB) | min (ms) | median (ms) | min / {base} | median / {base} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input_size']} | {r['bconv_ops']} | {r['float_conv_ops']} | "
            f"{r['size_bytes'] / 1e6:.2f} | {r['min_ms']:.1f} | {r['median_ms']:.1f} | "
            f"{r['min_ratio']:.3f} | {r['median_ratio']:.3f} |"
        )
    return "\n".join(lines)


def ratio_table(rows):
    """Markdown table of the latency ratios a reader compares beyond the base column:
    each ES model to its plain form (``es_X`` / ``X``) and each zoo model to
    QuickNet, where both rows exist."""
    by = {r["model"]: r for r in rows}
    pairs = [(m, m[len("es_"):]) for m in by if m.startswith("es_")]
    if "quicknet" in by:
        pairs += [(m, "quicknet") for m in by if m not in REFERENCE_MODELS]
    lines = ["| ratio | min | median |", "|---|---|---|"]
    for a, b in pairs:
        if a in by and b in by:
            lines.append(f"| {a} / {b} | {by[a]['min_ms'] / by[b]['min_ms']:.3f} | "
                         f"{by[a]['median_ms'] / by[b]['median_ms']:.3f} |")
    return "\n".join(lines)


def write_benchmark(rows, prefix, command, setup):
    """``PREFIX.md`` (command, setup, table, ratios) and ``PREFIX.json`` (command,
    setup, rows): the result files kept in ``benchmarks/``. Returns the Markdown."""
    text = f"`{command}`\n\n{setup}\n\n{format_table(rows)}\n\n{ratio_table(rows)}\n"
    with atomic_path(f"{prefix}.md") as tmp:
        pathlib.Path(tmp).write_text(text)
    with atomic_path(f"{prefix}.json") as tmp:
        pathlib.Path(tmp).write_text(json.dumps({"command": command, "setup": setup, "rows": rows}, indent=2) + "\n")
    return text


# -------------------------------------------------------------------------- CLI


def _input_size(value):
    size = int(value)
    if size < 1:
        raise argparse.ArgumentTypeError(f"input size must be a positive integer, got {value}")
    return size


def _cmd_export(args):
    entry = models.entry(args.model)
    size = args.input_size or entry.input_size
    out = pathlib.Path(args.output or f"{args.model.split('.')[0]}.tflite")
    if out.suffix != ".tflite":
        raise BadArgument(f"-o {out}: the output is a TFLite flatbuffer; give a name ending in .tflite")
    check_new_output(out, args.overwrite)
    takes = entry.arg_names()
    pad = {}
    if takes is None or "pad_value" in takes:
        pad = {"pad_value": float(args.pad_value or 0)}
    elif args.pad_value is not None:
        raise BadArgument(f"{args.model} has no binary convs with a padding value; drop --pad-value")
    if args.pad_value == 1 and args.weights:
        print(f"warning: --pad-value 1 changes what the weights {args.weights!r} compute if they were trained "
              "with pad value 0 (all shipped weights were): accuracy can drop a lot", file=sys.stderr)
    images = None
    if args.agreement_data:  # read before converting: a bad folder fails fast
        images, labels, _ = load_images(args.agreement_data, args.agreement_images, size)
    model = models.get(args.model, weights=args.weights, input_shape=(size, size, 3), **pad)
    if not args.no_optimize:
        model = optimize_for_inference(model)
    start = time.perf_counter()
    fb = export_tflite(model, fast=args.fast)
    print(f"{args.model} ({size}x{size}, pad value {pad.get('pad_value', '-')}) converted in "
          f"{time.perf_counter() - start:.1f} s")
    check = check_export(model, fb)
    print("ops: " + ", ".join(f"{k} {v}" for k, v in check.op_counts.items()))
    print(check.format())
    if images is not None:
        result = agreement(model, images, labels, fb=fb)
        print(
            f"agreement on {result['n']} images: top-1 {result['top1_agreement']:.3f}, "
            f"max |logit diff| {result['max_abs_logit_diff']:.2e}, logits within 1e-4 on "
            f"{result['exact_fraction']:.0%} of the images, Keras top-1 "
            f"{result['keras_top1']:.3f}, LCE top-1 {result['lce_top1']:.3f}"
        )
    with atomic_path(out) as tmp:
        pathlib.Path(tmp).write_bytes(fb)
    print(f"wrote {out} ({len(fb)} bytes, {len(fb) / 1e6:.2f} MB)")
    return 0 if check.ok else 1


def _cmd_benchmark(args):
    for name in args.models:
        if name not in REFERENCE_MODELS:
            models.entry(name)  # clear error for unknown names before converting anything
    if args.out:
        for suffix in (".md", ".json"):
            check_new_output(args.out + suffix, args.overwrite)
    log = (lambda msg: print(msg, file=sys.stderr)) if not args.json else None
    rows = benchmark(
        args.models, threads=args.threads, runs=args.runs, warmup=args.warmup,
        input_size=args.input_size, references=not args.no_reference, base=args.base,
        use_xnnpack=args.xnnpack, log=log,
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        print(f"\n{args.runs} runs per model (round-robin), {args.threads} thread(s), batch 1, "
              f"LCE interpreter{' + XNNPack' if args.xnnpack else ''}, {os.uname().machine}")
    if args.out:
        size = f"{args.input_size}x{args.input_size}" if args.input_size else "each model's own input size"
        setup = (f"{args.runs} timed runs per model after {args.warmup} warm-up runs, round-robin; "
                 f"{args.threads} thread(s); batch 1; {size}; LCE interpreter"
                 f"{' with XNNPack' if args.xnnpack else ' (XNNPack off)'}; {os.uname().machine}, "
                 f"{os.cpu_count()} CPUs")
        write_benchmark(rows, args.out, "larq-esbnn " + " ".join(args.argv), setup)
        print(f"wrote {args.out}.md and {args.out}.json", file=sys.stderr)
    return 0


def add_commands(subparsers):
    p = subparsers.add_parser(
        "export", help="convert a zoo model to an LCE TFLite flatbuffer and check its binary ops"
    )
    p.add_argument("model", help="registered model name (see `larq-esbnn models`)")
    p.add_argument("--weights", default=None, help="weights tag, file or URL (default: random init)")
    p.add_argument("--input-size", type=_input_size, default=None,
                   help="square input size (default: the model's own, 224 or 32)")
    p.add_argument("--pad-value", type=int, choices=(0, 1), default=None,
                   help="padding value of the 3x3 binary convs (0, the default: checkpoints, 1: LCE-native)")
    p.add_argument("-o", "--output", default=None, help="output .tflite path (default MODEL.tflite)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("--fast", action="store_true",
                   help="convert the frozen graph directly (same ops, skips the SavedModel export)")
    p.add_argument("--no-optimize", action="store_true",
                   help="export the model as built, without optimize_for_inference (the "
                        "ImageNet stems then convert wrongly)")
    p.add_argument("--agreement-data", default=None,
                   help="image folder or .tar.gz (DIR/<class>/*.jpg): report Keras/LCE top-1 agreement")
    p.add_argument("--agreement-images", type=positive_int, default=100)
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "benchmark",
        help="LCE latency of zoo models side by side with QuickNet, MobileNetV2 and ResNet50",
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help=f"registered model names (or {', '.join(REFERENCE_MODELS)})")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs per model")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed runs per model first")
    p.add_argument("--input-size", type=_input_size, default=None,
                   help="square input size for every row (default: each model's own; references 224)")
    p.add_argument("--base", default=None, help="row the ratios refer to (default: first MODEL)")
    p.add_argument("--no-reference", action="store_true", help="skip the QuickNet/MobileNetV2/ResNet50 rows")
    p.add_argument("--xnnpack", action="store_true", help="enable the XNNPack delegate for float ops")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="also write PREFIX.md (command, setup, table, ratios) and PREFIX.json")
    p.add_argument("--overwrite", action="store_true", help="replace the --out files if they exist")
    p.set_defaults(func=_cmd_benchmark)


__all__ = [
    "ExportCheck", "FlippedSameConv2D", "agreement", "benchmark", "binary_conv_layers",
    "check_export", "expected_bconv_count", "export_float_tflite", "export_tflite",
    "flatbuffer_ops", "format_table", "inspect_flatbuffer", "lce_hazards", "lce_interpreter",
    "lce_predict", "load_images", "optimize_for_inference", "ratio_table", "time_interpreters",
    "write_benchmark",
]
