"""Binary SSD detectors on the zoo's backbones, with ES (``tau``) and G (``groups``) in the head too.

Layout (SSD, Liu et al., ECCV 2016; "SSDLite" in the MobileNet sense of a light head):
backbone feature maps (``features_only=True``) -> extra stride-2 binary layers
(:func:`larq_esbnn.blocks.basic_layer`: binary 3x3, AvgPool + real 1x1 shortcut) for
the coarser levels -> per level a head: real 1x1 conv (to the stream width
``head_channels * tau * groups``) + BN -> ``head_depth`` binary 3x3 layers
(:func:`~larq_esbnn.blocks.basic_layer`, so the binary conv shrinks to
``head_channels / tau`` outputs and is tiled back, as in the classifier blocks) ->
two real 1x1 convs: class logits (background + ``num_classes``) and box offsets per
anchor. ES-BNN (Shi et al., 2025) reports detection with ES backbones; the ES
head here is *inferred* from its blocks (the paper gives no head code).

The model returns ``[box_offsets (B, N, 4), class_logits (B, N, 1 + num_classes)]``
over all N anchors; ``model.anchor_spec`` tells where the anchors are
(:mod:`larq_esbnn.detection.anchors`), and :func:`detect` decodes and runs NMS.
"""

import numpy as np
import tensorflow as tf

from larq_esbnn import blocks, registry
from larq_esbnn.detection.anchors import AnchorSpec, anchor_boxes, postprocess
from larq_esbnn.errors import BadArgument
from larq_esbnn.models.common import block_config, check_num_classes, finish

layers = tf.keras.layers


def _input(name, input_shape, default_size, multiple, min_size):
    shape = tuple(input_shape) if input_shape is not None else (default_size, default_size, 3)
    if len(shape) != 3 or shape[-1] != 3:
        raise BadArgument(f"{name}: input_shape must be (height, width, 3), got {shape}")
    for label, size in (("height", shape[0]), ("width", shape[1])):
        if not isinstance(size, int) or size < min_size or size % multiple:
            raise BadArgument(f"{name}: input {label} {size} is not allowed; use a multiple of {multiple} "
                              f"of at least {min_size} (default {default_size})")
    return shape


def ssd_head(x, level, anchors_per_location, num_classes, head_channels, head_depth, cfg):
    """One level's head: real 1x1 + BN -> binary 3x3 layers -> real 1x1 class and box convs.
    Returns flattened (B, H W A, 4) offsets and (B, H W A, 1 + num_classes) logits."""
    name = f"det{level}"
    y = layers.Conv2D(head_channels * cfg.width, 1, use_bias=False, name=f"{name}_expand")(x)
    y = cfg.bn(f"{name}_expand_bn")(y)
    for j in range(head_depth):
        y = blocks.basic_layer(y, head_channels, 1, cfg, f"{name}_b{j}")
    box = layers.Conv2D(anchors_per_location * 4, 1, name=f"{name}_box")(y)
    # background starts at probability ~0.99 (RetinaNet's prior), so early losses are not swamped
    prior = np.zeros((anchors_per_location, num_classes + 1), np.float32)
    prior[:, 0] = np.log(99.0 * num_classes)
    cls = layers.Conv2D(anchors_per_location * (num_classes + 1), 1, name=f"{name}_cls",
                        bias_initializer=tf.keras.initializers.Constant(prior.reshape(-1).tolist()))(y)
    box = layers.Reshape((-1, 4), name=f"{name}_box_flat")(box)
    cls = layers.Reshape((-1, num_classes + 1), name=f"{name}_cls_flat")(cls)
    return box, cls


def _join(tensors, name):
    if len(tensors) == 1:
        return layers.Activation("linear", name=name)(tensors[0])
    return layers.Concatenate(axis=1, name=name)(tensors)


def build_ssd(
    *,
    backbone,
    out_indices,
    extra_levels,
    scales,
    default_size,
    input_shape=None,
    weights=None,
    backbone_weights=None,
    num_classes=20,
    tau=1,
    groups=1,
    pad_value=0.0,
    symmetric=True,
    binary_weights=True,
    bn_momentum=0.9,
    extra_channels=128,
    head_channels=64,
    head_depth=1,
    aspect_ratios=(2.0, 0.5),
    head_from=0,
    name="ssd",
):
    """A binary SSD on registered backbone ``backbone`` (see the module docstring).

    ``out_indices``: the backbone stages used as levels (``models.feature_info``);
    ``extra_levels`` stride-2 binary layers of ``extra_channels`` follow the last
    one. ``weights``: a detector weights file (``.h5``); ``backbone_weights``: a
    weights tag or file of the backbone classifier (e.g. ``"cifar10"``), loaded
    into the backbone before the head is added (ignored when ``weights`` is given).
    Levels ``head_from`` onwards (backbone maps, then extra layers) get a head.
    """
    args = dict(locals())  # taken first, while it holds only the arguments
    check_num_classes(name, num_classes)
    if not isinstance(head_depth, int) or head_depth < 1 or not isinstance(extra_levels, int) or extra_levels < 0:
        raise BadArgument(f"{name}: head_depth must be >= 1 and extra_levels >= 0")
    cfg = block_config(args)
    stages = registry.feature_info(backbone, tau=tau, groups=groups)
    picked = [stages[i] for i in out_indices]
    coarsest = picked[-1].reduction * 2**extra_levels
    shape = _input(name, input_shape, default_size, coarsest, coarsest)
    inputs = tf.keras.Input(shape, name="input")
    features = registry.get(
        backbone, features_only=True, out_indices=out_indices, input_tensor=inputs,
        weights=None if weights is not None else backbone_weights, tau=tau, groups=groups,
        pad_value=pad_value, symmetric=symmetric, binary_weights=binary_weights, bn_momentum=bn_momentum,
    )
    maps, strides = list(features.outputs), [s.reduction for s in features.feature_info]
    x = maps[-1]
    for k in range(extra_levels):
        x = blocks.basic_layer(x, extra_channels, 2, cfg, f"extra{k}")
        maps.append(x)
        strides.append(strides[-1] * 2)
    maps, strides = maps[head_from:], strides[head_from:]
    spec = AnchorSpec(tuple((int(m.shape[1]), int(m.shape[2])) for m in maps), tuple(strides), tuple(scales),
                      tuple(aspect_ratios))
    heads = [ssd_head(m, k, spec.per_location, num_classes, head_channels, head_depth, cfg)
             for k, m in enumerate(maps)]
    box = _join([b for b, _ in heads], "box_offsets")
    cls = _join([c for _, c in heads], "class_logits")
    model = finish(inputs, [box, cls], name, weights)
    model.anchor_spec = spec
    model.num_classes = num_classes
    return model


@registry.register_model(
    "ssd_resnet20", "Binary SSD on ResNet-20 for 64-128 px inputs (3 levels, strides 8-32)",
    input_size=96, task="detection",
)
def ssd_resnet20(*, input_shape=None, weights=None, backbone_weights=None, num_classes=20, tau=1, groups=1,
                 pad_value=0.0, symmetric=True, binary_weights=True, bn_momentum=0.9, extra_channels=128,
                 head_channels=64, head_depth=1, backbone="resnet20", name="ssd_resnet20"):
    """Binary SSD on the CIFAR ResNet-20 (``es_ssd_resnet20``: tau = 2, backbone ``es_resnet20``).

    Backbone: ResNet-20's last stage (64 channels at stride 4), then three extra
    binary stride-2 layers of 128 channels (strides 8, 16, 32: 12x12, 6x6, 3x3 at
    the default 96 px); a head per extra level (anchor sides 0.15, 0.35, 0.6 of the
    input and 4 anchors per cell). Input: a multiple of 32, at least 32 (64-128 px
    is what it is meant for). ``backbone_weights="cifar10"`` starts from the shipped
    CIFAR-10 classifier.
    """
    model = build_ssd(backbone=backbone, out_indices=(3,), extra_levels=3, scales=(0.15, 0.35, 0.6, 0.85),
                default_size=96, input_shape=input_shape, weights=weights, backbone_weights=backbone_weights,
                num_classes=num_classes, tau=tau, groups=groups, pad_value=pad_value, symmetric=symmetric,
                binary_weights=binary_weights, bn_momentum=bn_momentum, extra_channels=extra_channels,
                head_channels=head_channels, head_depth=head_depth, head_from=1, name=name)
    return model


@registry.register_model(
    "ssdlite_reactnet_a", "Binary SSDLite on ReActNet-A (levels at strides 16-64, 320 px)",
    input_size=320, task="detection",
)
def ssdlite_reactnet_a(*, input_shape=None, weights=None, backbone_weights=None, num_classes=20, tau=1,
                       groups=1, pad_value=0.0, symmetric=True, binary_weights=True, bn_momentum=0.9,
                       extra_channels=256, head_channels=128, head_depth=1, backbone="reactnet_a",
                       name="ssdlite_reactnet_a"):
    """Binary SSDLite on ReActNet-A (``es_ssdlite_reactnet_a``: tau = 2, backbone ``es_reactnet_a``).

    Levels: ReActNet-A's stride-16 (512 channels, block b11) and stride-32 (1024,
    b13) maps as SSDLite takes MobileNet's, plus one extra binary stride-2 layer of
    256 channels (stride 64): 20x20, 10x10, 5x5 at the default 320 px. Input: a
    multiple of 64. ``backbone_weights`` takes the backbone's tags or files (the
    released ImageNet checkpoints are converted on first use).
    """
    return build_ssd(backbone=backbone, out_indices=(3, 4), extra_levels=1, scales=(0.1, 0.3, 0.6, 0.9),
               default_size=320, input_shape=input_shape, weights=weights, backbone_weights=backbone_weights,
               num_classes=num_classes, tau=tau, groups=groups, pad_value=pad_value, symmetric=symmetric,
               binary_weights=binary_weights, bn_momentum=bn_momentum, extra_channels=extra_channels,
               head_channels=head_channels, head_depth=head_depth, name=name)


es_ssd_resnet20 = registry.register_variant(
    "es_ssd_resnet20", ssd_resnet20, "ssd_resnet20 with expanding-and-shrinking (tau=2) in backbone and head",
    input_size=96, task="detection", tau=2, backbone="es_resnet20",
)
es_ssdlite_reactnet_a = registry.register_variant(
    "es_ssdlite_reactnet_a", ssdlite_reactnet_a,
    "ssdlite_reactnet_a with expanding-and-shrinking (tau=2) in backbone and head",
    input_size=320, task="detection", tau=2, backbone="es_reactnet_a",
)


def detect(model, images, score_threshold=0.01, iou_threshold=0.5, max_detections=100):
    """Run ``model`` on preprocessed ``images`` and return, per image, a dict of
    ``boxes`` (K, 4) normalised ``[x_min, y_min, x_max, y_max]``, ``scores`` and
    ``classes`` (0-based) after NMS."""
    anchors = tf.constant(anchor_boxes(model.anchor_spec))
    offsets, logits = model(images, training=False)
    boxes, scores, classes, valid = postprocess(offsets, logits, anchors, score_threshold, iou_threshold,
                                                max_detections, max_detections)
    out = []
    for b, s, c, n in zip(boxes.numpy(), scores.numpy(), classes.numpy(), valid.numpy()):
        out.append({"boxes": b[:n].astype(np.float32), "scores": s[:n], "classes": c[:n]})
    return out
