"""Training and evaluation of the detectors: loss, loop, mAP with pycocotools, CLI.

Loss (SSD): smooth-L1 on the offsets of the positive anchors plus softmax
cross-entropy on the positives and the hardest negatives (three per positive),
both divided by the number of positives. mAP@0.5 and COCO mAP@[.5:.95] come from
``pycocotools`` (``pip install -e ".[detection]"``), on boxes in the original image
pixels.

A run folder holds ``weights.h5`` (the detector), ``run.json`` (model, classes,
input size, steps, wall time, final metrics) and ``log.csv`` (loss per logged
step); ``larq-esbnn detect-eval RUN DATA`` rebuilds the model from ``run.json``.
"""

import contextlib
import csv
import io
import json
import pathlib
import sys
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

import larq_esbnn.detection.ssd  # noqa: F401  (registers the detectors)
from larq_esbnn import registry
from larq_esbnn.detection.anchors import anchor_boxes, match, postprocess
from larq_esbnn.detection.data import dataset, load_split
from larq_esbnn.errors import BadArgument, BadData, positive_float, positive_int
from larq_esbnn.util import atomic_path, atomic_write_text

NEGATIVES_PER_POSITIVE = 3


def detection_loss(offsets, logits, anchors, boxes, labels):
    """``(total, box, class)`` losses of a batch (see the module docstring)."""
    classes, targets = match(anchors, boxes, labels)
    positive = classes > 0
    n_pos = tf.maximum(tf.reduce_sum(tf.cast(positive, tf.float32)), 1.0)
    box_loss = tf.reduce_sum(tf.where(positive[..., None], tf.keras.losses.Huber(
        reduction="none")(targets[..., None], offsets[..., None]), 0.0)) / n_pos
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(classes, 0), logits)
    negative = tf.equal(classes, 0)
    # hard negatives: per image, the negatives with the largest loss, 3 per positive
    neg_loss = tf.where(negative, ce, -1.0)
    rank = tf.argsort(tf.argsort(neg_loss, -1, direction="DESCENDING"), -1)
    per_image = tf.reduce_sum(tf.cast(positive, tf.int32), -1, keepdims=True)
    keep = tf.logical_and(negative, rank < tf.maximum(NEGATIVES_PER_POSITIVE * per_image, 4))
    cls_loss = tf.reduce_sum(tf.where(tf.logical_or(positive, keep), ce, 0.0)) / n_pos
    return box_loss + cls_loss, box_loss, cls_loss


def build(model_name, num_classes, input_size=None, weights=None, backbone_weights=None):
    entry = registry.entry(model_name)
    if entry.task != "detection":
        detectors = ", ".join(n for n in registry.names() if registry.entry(n).task == "detection")
        raise BadArgument(f"{model_name} is not a detector; detectors: {detectors}")
    size = input_size or entry.input_size
    return registry.get(model_name, num_classes=num_classes, input_shape=(size, size, 3), weights=weights,
                        backbone_weights=backbone_weights)


def train(model_name, data, out, steps=1000, batch_size=16, learning_rate=2e-3, input_size=None,
          backbone_weights=None, seed=0, log_every=20, eval_split="test", progress=True):
    """Train detector ``model_name`` on ``data/train`` for ``steps`` steps (Adam,
    cosine decay after a 5 % warm-up), write the run folder ``out``, evaluate on
    ``data/<eval_split>`` (None: no evaluation) and return ``run.json``'s dict."""
    if steps < 1 or batch_size < 1:
        raise BadArgument("steps and batch size must be positive")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split = load_split(data, "train")
    tf.keras.utils.set_random_seed(seed)
    model = build(model_name, len(split.classes), input_size, backbone_weights=backbone_weights)
    size = model.input_shape[1]
    anchors = tf.constant(anchor_boxes(model.anchor_spec))
    warmup = max(1, steps // 20)
    cosine = tf.keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=learning_rate,
                                                       warmup_steps=warmup)
    # the legacy Adam applies each variable with one fused kernel: its graph traces in
    # about half the time of the new optimizer's (the first step of a short run)
    optimizer = tf.keras.optimizers.legacy.Adam(cosine)

    @tf.function(reduce_retracing=True)
    def step(images, boxes, labels):
        with tf.GradientTape() as tape:
            offsets, logits = model(images, training=True)
            total, box_loss, cls_loss = detection_loss(offsets, logits, anchors, boxes, labels)
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total, box_loss, cls_loss

    batches = iter(dataset(split, size, batch_size, training=True, seed=seed))
    start = time.perf_counter()
    rows, recent = [], []
    bar = tqdm(range(1, steps + 1), desc=f"train {model_name}", disable=not progress, file=sys.stderr)
    for i in bar:
        images, boxes, labels = next(batches)
        losses = [float(v) for v in step(images, boxes, labels)]
        if not np.isfinite(losses[0]):
            raise FloatingPointError(f"{model_name}: loss became {losses[0]} at step {i}")
        recent.append(losses)
        if i % log_every == 0 or i == steps:
            mean = np.mean(recent, 0)
            recent = []
            rows.append({"step": i, "seconds": round(time.perf_counter() - start, 1),
                         "loss": float(mean[0]), "box_loss": float(mean[1]), "class_loss": float(mean[2])})
            bar.set_postfix(loss=f"{mean[0]:.3f}")
    seconds = time.perf_counter() - start
    with atomic_path(out / "weights.h5") as tmp:
        model.save_weights(tmp)
    with atomic_path(out / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "seconds", "loss", "box_loss", "class_loss"])
        writer.writeheader()
        writer.writerows(rows)
    run = {"model": model_name, "classes": split.classes, "input_size": size, "steps": steps,
           "batch_size": batch_size, "learning_rate": learning_rate, "backbone_weights": backbone_weights,
           "seed": seed, "train_images": len(split), "train_seconds": round(seconds, 1),
           "images_per_second": round(steps * batch_size / seconds, 2), "final_loss": rows[-1]["loss"]}
    if eval_split:
        run["eval"] = {"split": eval_split, **evaluate(model, load_split(data, eval_split, split.classes),
                                                       batch_size, progress)}
    atomic_write_text(out / "run.json", json.dumps(run, indent=2) + "\n")
    return run


def load_run(run_dir):
    """The detector of run folder ``run_dir`` (``run.json`` + ``weights.h5``) and its record."""
    run_dir = pathlib.Path(run_dir)
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as err:
        raise BadData(f"{run_dir}: not a detection run folder (run.json: {err})") from None
    model = build(run["model"], len(run["classes"]), run["input_size"], weights=str(run_dir / "weights.h5"))
    return model, run


def predict_split(model, split, batch_size=16, progress=True, score_threshold=0.01):
    """Detections of ``model`` on every image of ``split`` in COCO's result format
    (``image_id`` = index in the split, boxes ``[x, y, w, h]`` in image pixels)."""
    anchors = tf.constant(anchor_boxes(model.anchor_spec))

    @tf.function(reduce_retracing=True)
    def run(images):
        offsets, logits = model(images, training=False)
        return postprocess(offsets, logits, anchors, score_threshold=score_threshold)

    results, index = [], 0
    ds = dataset(split, model.input_shape[1], batch_size)
    total = -(-len(split) // batch_size)
    for images, _, _ in tqdm(ds, total=total, desc="detect", disable=not progress, file=sys.stderr):
        boxes, scores, classes, valid = (t.numpy() for t in run(images))
        for b, s, c, n in zip(boxes, scores, classes, valid):
            w, h = split.sizes[index]
            for box, score, cls in zip(b[:n], s[:n], c[:n]):
                x0, y0, x1, y1 = (float(v) for v in box * [w, h, w, h])
                results.append({"image_id": index, "category_id": int(cls) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
            index += 1
    return results


def coco_ground_truth(split):
    """``split`` as a pycocotools ``COCO`` object (category ids = class index + 1)."""
    from pycocotools.coco import COCO

    images, annotations = [], []
    for i, ((w, h), boxes, labels) in enumerate(zip(split.sizes, split.boxes, split.labels)):
        images.append({"id": i, "width": int(w), "height": int(h), "file_name": split.files[i]})
        for box, label in zip(boxes, labels):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": i + 1, "name": n} for i, n in enumerate(split.classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_map(split, results):
    """``{"map": mAP@[.5:.95], "map50": mAP@0.5, "map75": ...}`` of ``results`` on
    ``split``, computed by pycocotools' COCOeval (100 detections per image)."""
    try:
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise BadArgument("mAP needs pycocotools: pip install -e \".[detection]\"") from None
    gt = coco_ground_truth(split)
    if not results:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0, "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(float(v), 0.0) for v in ev.stats]  # -1 means "no ground truth in that range"
    return {"map": stats[0], "map50": stats[1], "map75": stats[2], "detections": len(results)}


def evaluate(model, split, batch_size=16, progress=True):
    """mAP@0.5 and mAP@[.5:.95] of ``model`` on ``split`` (pycocotools)."""
    start = time.perf_counter()
    results = predict_split(model, split, batch_size, progress)
    metrics = coco_map(split, results)
    return {**metrics, "images": len(split), "boxes": int(sum(len(b) for b in split.boxes)),
            "seconds": round(time.perf_counter() - start, 1)}


# ---------------------------------------------------------------------- CLI


def _cmd_train(args):
    run = train(args.model, args.data, args.output, steps=args.steps, batch_size=args.batch_size,
                learning_rate=args.lr, input_size=args.input_size, backbone_weights=args.backbone_weights,
                seed=args.seed, eval_split=None if args.no_eval else args.eval_split)
    line = f"{args.model}: {run['steps']} steps in {run['train_seconds']:.0f} s, final loss {run['final_loss']:.3f}"
    if "eval" in run:
        e = run["eval"]
        line += f"; {e['split']}: mAP@0.5 {e['map50']:.4f}, mAP@[.5:.95] {e['map']:.4f} ({e['images']} images)"
    print(line)
    print(f"wrote {args.output}/weights.h5, run.json, log.csv")
    return 0


def _cmd_eval(args):
    model, run = load_run(args.run)
    split = load_split(args.data, args.split, run["classes"])
    e = evaluate(model, split, args.batch_size)
    if args.json:
        print(json.dumps(e))
    else:
        print(f"{run['model']} on {args.data}/{args.split} ({e['images']} images, {e['boxes']} boxes): "
              f"mAP@0.5 {e['map50']:.4f}, mAP@[.5:.95] {e['map']:.4f}")
    return 0


def add_commands(sub):
    p = sub.add_parser("detect-train", help="train a binary SSD detector on a folder of images with boxes",
                       description="Train a detector (ssd_resnet20, es_ssd_resnet20, ssdlite_reactnet_a, ...) "
                       "on DATA/train (boxes.csv or one JSON per image; see docs/detection.md), then "
                       "evaluate mAP on DATA/test with pycocotools.")
    p.add_argument("model", help="detector name (larq-esbnn models 'ssd*')")
    p.add_argument("data", help="data set folder with train/ and test/ splits")
    p.add_argument("-o", "--output", required=True, help="run folder (weights.h5, run.json, log.csv)")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate (Adam, cosine decay)")
    p.add_argument("--input-size", type=positive_int, default=None, help="square input size (default: the model's)")
    p.add_argument("--backbone-weights", default=None, help="weights tag or file of the backbone (e.g. cifar10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-split", default="test")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("detect-eval", help="mAP@0.5 and mAP@[.5:.95] of a trained detector (pycocotools)")
    p.add_argument("run", help="run folder written by detect-train")
    p.add_argument("data", help="data set folder")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)
