"""Anchors, box encoding / decoding, matching and NMS of the SSD detectors.

Boxes are ``[x_min, y_min, x_max, y_max]`` in coordinates normalised to the
input (0..1) everywhere inside the package; pixels appear only at the data and
evaluation boundaries. Offsets follow SSD (Liu et al., ECCV 2016): centre
offsets in anchor units divided by 0.1, log size ratios divided by 0.2.
"""

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2


@dataclass(frozen=True)
class AnchorSpec:
    """Where the anchors of a detector sit: one entry per feature level.

    feature_sizes: ``(height, width)`` of each level's map; scales: anchor side
    per level relative to the input, plus one more (level k also gets an anchor of
    side ``sqrt(s_k s_{k+1})``); aspect_ratios: width / height of the other
    anchors of side ``s_k`` (1 is always there).
    """

    feature_sizes: tuple
    strides: tuple
    scales: tuple
    aspect_ratios: tuple = (2.0, 0.5)

    def __post_init__(self):
        if len(self.scales) != len(self.feature_sizes) + 1:
            raise ValueError(f"scales needs one entry per level plus one ({len(self.feature_sizes) + 1}), "
                             f"got {len(self.scales)}")
        if any(not 0 < s <= 2 for s in self.scales) or any(r <= 0 for r in self.aspect_ratios):
            raise ValueError(f"scales must be in (0, 2] and aspect ratios positive: {self.scales}, "
                             f"{self.aspect_ratios}")

    @property
    def per_location(self):
        return 2 + len(self.aspect_ratios)

    @property
    def count(self):
        return sum(h * w for h, w in self.feature_sizes) * self.per_location


def anchor_boxes(spec):
    """All anchors of ``spec`` as a float32 array (N, 4), in the order of the
    detector's outputs (level, row, column, anchor)."""
    out = []
    for k, (h, w) in enumerate(spec.feature_sizes):
        s, s_next = spec.scales[k], spec.scales[k + 1]
        shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
        shapes += [(s * math.sqrt(r), s / math.sqrt(r)) for r in spec.aspect_ratios]
        cy, cx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        centres = np.stack([cx, cy], -1).reshape(-1, 1, 2)
        sizes = np.asarray(shapes, np.float64).reshape(1, -1, 2)
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1)
        out.append(boxes.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def _centre_form(boxes):
    size = boxes[..., 2:] - boxes[..., :2]
    return boxes[..., :2] + size / 2, size


def encode(boxes, anchors):
    """SSD offsets of ``boxes`` from ``anchors`` (both (..., 4), broadcast)."""
    c, s = _centre_form(boxes)
    ac, asz = _centre_form(anchors)
    s = tf.maximum(s, 1e-6)
    return tf.concat([(c - ac) / asz / CENTER_VARIANCE, tf.math.log(s / asz) / SIZE_VARIANCE], -1)


def decode(offsets, anchors):
    """Boxes from SSD ``offsets`` relative to ``anchors`` (inverse of :func:`encode`)."""
    ac, asz = _centre_form(anchors)
    c = offsets[..., :2] * CENTER_VARIANCE * asz + ac
    s = tf.exp(tf.minimum(offsets[..., 2:] * SIZE_VARIANCE, 4.0)) * asz
    return tf.concat([c - s / 2, c + s / 2], -1)


def iou(a, b):
    """Pairwise IoU of boxes ``a`` (..., N, 4) and ``b`` (..., M, 4): (..., N, M)."""
    a = a[..., :, None, :]
    b = b[..., None, :, :]
    lo = tf.maximum(a[..., :2], b[..., :2])
    hi = tf.minimum(a[..., 2:], b[..., 2:])
    inter = tf.reduce_prod(tf.maximum(hi - lo, 0.0), -1)
    area_a = tf.reduce_prod(tf.maximum(a[..., 2:] - a[..., :2], 0.0), -1)
    area_b = tf.reduce_prod(tf.maximum(b[..., 2:] - b[..., :2], 0.0), -1)
    return inter / tf.maximum(area_a + area_b - inter, 1e-9)


def match(anchors, boxes, labels, positive=0.5, negative=0.4):
    """Training targets for a batch (TF ops, runs inside the training step).

    ``boxes`` (B, M, 4) and ``labels`` (B, M) are padded with label -1. Each anchor
    takes the box it overlaps most: a positive if IoU >= ``positive``, background
    below ``negative``, ignored in between; every box also claims its best anchor.
    Returns class targets (B, N) (0 background, label + 1 objects, -1 ignored)
    and box offsets (B, N, 4).
    """
    valid = labels >= 0
    overlap = iou(anchors[None], boxes)  # (B, N, M)
    overlap = tf.where(valid[:, None, :], overlap, -1.0)
    best_box = tf.argmax(overlap, -1, output_type=tf.int32)  # (B, N)
    best_iou = tf.reduce_max(overlap, -1)
    # each real box claims its best anchor, whatever the IoU
    best_anchor = tf.argmax(overlap, 1, output_type=tf.int32)  # (B, M)
    claimed = tf.one_hot(best_anchor, tf.shape(anchors)[0], dtype=tf.int32, axis=-1)  # (B, M, N)
    claimed *= tf.cast(valid, tf.int32)[..., None]
    claim_any = tf.reduce_max(claimed, 1) > 0  # (B, N)
    claim_box = tf.argmax(claimed, 1, output_type=tf.int32)
    best_box = tf.where(claim_any, claim_box, best_box)
    best_iou = tf.where(claim_any, 1.0, best_iou)
    matched_labels = tf.gather(labels, best_box, batch_dims=1)
    matched_boxes = tf.gather(boxes, best_box, batch_dims=1)
    classes = tf.where(best_iou >= positive, matched_labels + 1, tf.where(best_iou < negative, 0, -1))
    return classes, encode(matched_boxes, anchors[None])


def postprocess(offsets, logits, anchors, score_threshold=0.01, iou_threshold=0.5, max_per_class=50,
                max_total=100):
    """Decoded, non-max-suppressed detections of a batch (``tf.image.combined_non_max_suppression``).

    Returns boxes (B, K, 4) normalised ``[x_min, y_min, x_max, y_max]``, scores
    (B, K), class indices (B, K, 0-based, without the background) and the number of
    valid rows per image (B,).
    """
    boxes = decode(offsets, anchors[None])
    scores = tf.nn.softmax(logits, -1)[..., 1:]
    nms = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], scores, max_per_class, max_total, iou_threshold=iou_threshold,
        score_threshold=score_threshold, clip_boxes=True,
    )
    return nms.nmsed_boxes, nms.nmsed_scores, tf.cast(nms.nmsed_classes, tf.int32), nms.valid_detections
