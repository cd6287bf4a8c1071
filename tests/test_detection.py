"""Issue 31: feature maps of every CNN family, the binary SSD detectors, their
counts and LCE export, boxes on disk, loss, training and pycocotools mAP."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from larq_esbnn import cli, export, models, registry
from larq_esbnn.detection import anchors as anchors_lib
from larq_esbnn.detection import data as data_lib
from larq_esbnn.detection import ssd as ssd_lib
from larq_esbnn.detection import train as train_lib
from larq_esbnn.errors import BadArgument, BadData

# ----------------------------------------------------------------- feature maps

# one model of every CNN family, small inputs: (name, input, extra args,
# [(height, channels)] of every stage); the strides are input / height
FAMILIES = [
    ("es_g_resnet20", 32, {}, [(32, 64), (32, 64), (16, 128), (8, 256)]),
    ("resnet20_fp", 32, {}, [(32, 16), (32, 16), (16, 32), (8, 64)]),
    ("es_reactnet_a", 64, {}, [(32, 128), (16, 256), (8, 512), (4, 1024), (2, 2048)]),
    ("reactnet_18", 64, {}, [(32, 64), (16, 64), (8, 128), (4, 256), (2, 512)]),
    ("bcdnet_b", 64, {"mlp_repeats": 1}, [(32, 64), (16, 128), (8, 256), (4, 512), (2, 1024)]),
    ("bcdnet_a_18", 64, {"mlp_repeats": 1}, [(32, 64), (16, 64), (8, 128), (4, 256), (2, 512)]),
    ("es_bnext_t", 64, {}, [(32, 128), (16, 256), (8, 512), (4, 1024), (2, 2048)]),
]


@pytest.mark.parametrize("name,size,extra,stages", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_features_only_shapes_and_strides(name, size, extra, stages):
    info = models.feature_info(name, **extra)
    assert [(s.channels, s.reduction) for s in info] == [(c, size // h) for h, c in stages]
    assert all(s.stage for s in info) and [s.index for s in info] == list(range(len(stages)))
    model = models.get(name, features_only=True, input_shape=(size, size, 3), **extra)
    assert [tuple(t.shape[1:]) for t in model.outputs] == [(h, h, c) for h, c in stages]
    assert model.feature_info == tuple(info)
    x = np.random.RandomState(0).randn(1, size, size, 3).astype(np.float32)
    maps = model(x, training=False)
    assert len(maps) == len(stages) and all(np.all(np.isfinite(m.numpy())) for m in maps)
    picked = models.get(name, features_only=True, out_indices=(-1, 1), input_shape=(size, size, 3), **extra)
    assert [s.index for s in picked.feature_info] == [len(stages) - 1, 1]
    tf.keras.backend.clear_session()


def test_every_cnn_family_declares_features():
    declared = {n for n in models.names() if n in registry._FEATURES}
    cnn = {n for n in models.names() if models.entry(n).task == "classification"
           and not any(k in n for k in ("vit", "mixer"))}
    assert declared == cnn
    for name in declared:
        strides = [s.reduction for s in models.feature_info(name)]
        assert strides == sorted(strides) and strides[-1] in (4, 32)


def test_feature_weights_load_as_for_the_classifier():
    classifier = models.get("es_resnet20", weights="cifar10")
    features = models.get("es_resnet20", features_only=True, out_indices=(2, 3), weights="cifar10")
    x = np.random.RandomState(2).randn(2, 32, 32, 3).astype(np.float32)
    inner = tf.keras.Model(classifier.inputs, [classifier.get_layer(n).output for n in ("l11_rprelu", "l17_rprelu")])
    for got, want in zip(features(x, training=False), inner(x, training=False)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"out_indices": (1,)}, "needs features_only=True"),
    ({"features_only": True, "out_indices": (4,)}, "out_indices"),
    ({"features_only": True, "out_indices": (1, 1)}, "distinct"),
    ({"features_only": True, "include_top": True}, "leaves the head out"),
    ({"features_only": True, "num_classes": 3}, "num_classes"),
])
def test_features_bad_arguments(kwargs, match):
    with pytest.raises(BadArgument, match=match):
        models.get("resnet20", **kwargs)


def test_models_without_stages_say_so():
    with pytest.raises(BadArgument, match="binaryvit_cifar declares no feature stages; features_only works for"):
        models.get("binaryvit_cifar", features_only=True)


# ----------------------------------------------------------------- anchors and boxes


def test_encode_decode_round_trip_and_matching():
    spec = anchors_lib.AnchorSpec(((4, 4), (2, 2)), (16, 32), (0.2, 0.5, 0.8))
    anchors = anchors_lib.anchor_boxes(spec)
    assert anchors.shape == (spec.count, 4) == ((16 + 4) * 4, 4)
    boxes = tf.constant([[0.1, 0.2, 0.4, 0.45], [0.5, 0.5, 0.95, 0.9]])
    offsets = anchors_lib.encode(boxes[:, None], anchors[None])
    np.testing.assert_allclose(anchors_lib.decode(offsets, anchors[None]).numpy(),
                               np.broadcast_to(boxes.numpy()[:, None], (2, len(anchors), 4)), atol=1e-5)
    labels = tf.constant([[3, 1, -1]])
    padded = tf.concat([boxes, tf.zeros((1, 4))], 0)[None]
    classes, targets = anchors_lib.match(tf.constant(anchors), padded, labels)
    classes = classes.numpy()[0]
    assert set(classes[classes > 0]) == {4, 2}  # label + 1, each box has at least its best anchor
    best = int(np.argmax(anchors_lib.iou(tf.constant(anchors), boxes[:1]).numpy()[:, 0]))
    assert classes[best] == 4
    np.testing.assert_allclose(anchors_lib.decode(targets[0, best], anchors[best]).numpy(), boxes[0].numpy(),
                               atol=1e-5)


def test_postprocess_finds_the_encoded_box():
    spec = anchors_lib.AnchorSpec(((3, 3),), (32,), (0.3, 0.6))
    anchors = tf.constant(anchors_lib.anchor_boxes(spec))
    box = tf.constant([[0.3, 0.3, 0.62, 0.66]])
    offsets = anchors_lib.encode(box, anchors)[None]
    logits = np.zeros((1, spec.count, 3), np.float32)
    logits[..., 0] = 5.0
    logits[0, 17, 2] = 10.0  # one anchor says class 1 (0-based)
    boxes, scores, classes, valid = anchors_lib.postprocess(offsets, tf.constant(logits), anchors, 0.5)
    assert int(valid[0]) == 1 and int(classes[0, 0]) == 1 and float(scores[0, 0]) > 0.99
    np.testing.assert_allclose(boxes[0, 0].numpy(), box[0].numpy(), atol=1e-5)


def test_loss_is_finite_and_falls_with_the_right_answer():
    spec = anchors_lib.AnchorSpec(((3, 3),), (32,), (0.3, 0.6))
    anchors = tf.constant(anchors_lib.anchor_boxes(spec))
    boxes = tf.constant([[[0.3, 0.3, 0.62, 0.66], [0, 0, 0, 0]]])
    labels = tf.constant([[1, -1]])
    classes, targets = anchors_lib.match(anchors, boxes, labels)
    wrong = train_lib.detection_loss(tf.zeros_like(targets), tf.zeros((1, spec.count, 3)), anchors, boxes, labels)
    right_logits = tf.one_hot(classes, 3) * 20.0
    right = train_lib.detection_loss(targets, right_logits, anchors, boxes, labels)
    assert all(np.isfinite(float(v)) for v in wrong) and float(right[0]) < 1e-3 < float(wrong[0])


# ----------------------------------------------------------------- the detectors


def test_detectors_are_registered_as_models():
    assert {"ssd_resnet20", "es_ssd_resnet20", "ssdlite_reactnet_a", "es_ssdlite_reactnet_a"} <= set(models.names())
    assert all(models.entry(n).task == "detection" for n in models.names("*ssd*"))


@pytest.mark.parametrize("name,tau", [("ssd_resnet20", 1), ("es_ssd_resnet20", 2)])
def test_ssd_resnet20_outputs_and_es_head(name, tau):
    model = models.get(name, num_classes=3, input_shape=(64, 64, 3))
    spec = model.anchor_spec
    assert spec.feature_sizes == ((8, 8), (4, 4), (2, 2)) and spec.strides == (8, 16, 32)
    assert [tuple(t.shape[1:]) for t in model.outputs] == [(spec.count, 4), (spec.count, 1 + 3)]
    head = model.get_layer("det0_b0_conv")  # the head's binary 3x3 shrinks to C / tau
    assert head.filters == 64 // tau and model.get_layer("det0_expand").filters == 64 * tau
    found = ssd_lib.detect(model, np.zeros((2, 64, 64, 3), np.float32), score_threshold=0.0)
    assert len(found) == 2 and found[0]["boxes"].shape[1] == 4


def test_ssdlite_reactnet_a_levels():
    model = models.get("es_ssdlite_reactnet_a", num_classes=2, input_shape=(128, 128, 3))
    assert model.anchor_spec.feature_sizes == ((8, 8), (4, 4), (2, 2)) and model.anchor_spec.strides == (16, 32, 64)
    assert model.get_layer("b13_rprelu2").output.shape[-1] == 2048  # the ES backbone
    with pytest.raises(BadArgument, match="multiple of 64"):
        models.get("ssdlite_reactnet_a", input_shape=(96, 96, 3))


def test_summary_counts_the_detector(capsys):
    assert cli.main(["summary", "ssd_resnet20", "--json", "--input-size", "64"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert cli.main(["summary", "es_ssd_resnet20", "--json", "--input-size", "64"]) == 0
    es = json.loads(capsys.readouterr().out)
    assert small["bops"] > 0 and small["flops"] > 0 and small["ops"] == pytest.approx(small["bops"] / 64 + small["flops"])
    # ES: the same binary MACs, a wider real-valued stream
    assert es["bops"] == small["bops"] and es["flops"] > small["flops"]


def test_lce_export_makes_every_binary_conv_a_bconv():
    model = models.get("ssd_resnet20", num_classes=3, input_shape=(64, 64, 3))
    deployable = export.optimize_for_inference(model)
    fb = export.export_tflite(deployable, fast=True)
    check = export.check_export(deployable, fb)
    # 18 in ResNet-20, 3 extra stride-2 layers, one per head level
    assert check.expected == check.found == 24, check.format()
    assert check.ok and not check.float_by_design


# ----------------------------------------------------------------- data, training, mAP


def _write_set(root, n_train=6, n_test=3, form="csv"):
    rng = np.random.RandomState(0)
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    for split, n in (("train", n_train), ("test", n_test)):
        folder = root / split
        folder.mkdir()
        rows = []
        for i in range(n):
            image = rng.randint(0, 60, (72, 80, 3)).astype(np.uint8)
            x, y, label = 8 + 4 * i, 10 + 2 * i, ("cat", "dog")[i % 2]
            image[y:y + 30, x:x + 32] = (220, 40, 40) if label == "cat" else (40, 40, 220)
            Image.fromarray(image).save(folder / f"{i:03d}.png")
            rows.append((f"{i:03d}.png", x, y, x + 32, y + 30, label))
            if form == "json":
                (folder / f"{i:03d}.json").write_text(json.dumps({"boxes": [[x, y, x + 32, y + 30]], "labels": [label]}))
        if form == "csv":
            with open(folder / "boxes.csv", "w", newline="") as f:
                csv.writer(f).writerows([("image", "x_min", "y_min", "x_max", "y_max", "label"), *rows])
    return root


@pytest.mark.parametrize("form", ["csv", "json"])
def test_both_box_formats_read_the_same(tmp_path, form):
    split = data_lib.load_split(_write_set(tmp_path / form, form=form), "train")
    assert split.classes == ["cat", "dog"] and len(split) == 6 and split.sizes[0] == (80, 72)
    np.testing.assert_array_equal(split.boxes[1], [[12, 12, 44, 42]])
    assert list(split.labels[1]) == [1]
    images, boxes, labels = next(iter(data_lib.dataset(split, 32, 4)))
    assert images.shape == (4, 32, 32, 3) and boxes.shape == (4, 1, 4) and labels.shape == (4, 1)
    np.testing.assert_allclose(boxes[1, 0].numpy(), [12 / 80, 12 / 72, 44 / 80, 42 / 72], rtol=1e-6)


@pytest.mark.parametrize("change,match", [
    (lambda d: (d / "train" / "boxes.csv").write_text("image,x,y\n"), "header must name"),
    (lambda d: (d / "train" / "boxes.csv").write_text("image,x_min,y_min,x_max,y_max,label\n000.png,9,9,1,1,cat\n"),
     "empty or outside"),
    (lambda d: (d / "train" / "boxes.csv").write_text("image,x_min,y_min,x_max,y_max,label\n000.png,1,1,9,9,cow\n"),
     "cow are not among the classes"),
    (lambda d: (d / "train" / "boxes.csv").write_text("image,x_min,y_min,x_max,y_max,label\nnone.png,1,1,9,9,cat\n"),
     "does not exist"),
])
def test_bad_boxes_are_one_clear_line(tmp_path, change, match):
    root = _write_set(tmp_path / "d")
    change(root)
    with pytest.raises(BadData, match=match):
        data_lib.load_split(root, "train")


def test_coco_map_of_the_ground_truth_is_one(tmp_path):
    split = data_lib.load_split(_write_set(tmp_path / "d"), "test")
    perfect = [{"image_id": i, "category_id": int(lb) + 1, "score": 0.9,
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
               for i, (bs, lbs) in enumerate(zip(split.boxes, split.labels)) for b, lb in zip(bs, lbs)]
    result = train_lib.coco_map(split, perfect)
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    shifted = [{**r, "bbox": [r["bbox"][0] + 12, *r["bbox"][1:]]} for r in perfect]  # IoU ~0.45
    assert train_lib.coco_map(split, shifted)["map50"] == 0.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = _write_set(tmp_path_factory.mktemp("boxes") / "set")
    out = tmp_path_factory.mktemp("run") / "ssd"
    run = train_lib.train("ssd_resnet20", root, out, steps=3, batch_size=3, input_size=64, seed=0,
                          log_every=1, progress=False)
    return root, out, run


def test_a_few_training_steps_write_a_run(trained):
    root, out, run = trained
    assert (out / "weights.h5").is_file() and (out / "log.csv").is_file()
    assert run["steps"] == 3 and run["classes"] == ["cat", "dog"] and np.isfinite(run["final_loss"])
    assert set(run["eval"]) >= {"map", "map50", "images"} and run["eval"]["images"] == 3
    assert json.loads((out / "run.json").read_text())["eval"]["map50"] == run["eval"]["map50"]


def test_detect_eval_cli_reloads_the_run(trained, capsys):
    root, out, run = trained
    assert cli.main(["detect-eval", str(out), str(root), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["map50"] == pytest.approx(run["eval"]["map50"]) and again["map"] == pytest.approx(run["eval"]["map"])
    assert cli.main(["detect-eval", str(out), str(root), "--split", "val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such split folder" in err[0]


def test_detect_train_rejects_a_classifier(tmp_path, capsys):
    root = _write_set(tmp_path / "d")
    assert cli.main(["detect-train", "resnet20", str(root), "-o", str(tmp_path / "r"), "--steps", "1"]) == 2
    assert "resnet20 is not a detector; detectors: " in capsys.readouterr().err
