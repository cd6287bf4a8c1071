"""``larq_esbnn.predict`` and ``larq-esbnn predict`` (issue 16, part 2).

The shipped asset ``tests/assets/cifar10_test_airplane_0000.jpg`` is
``test/airplane/0000.jpg`` of the project's CIFAR-10 archive
(``shared/datasets/cifar10/test.tar.gz``), extracted unchanged (888 bytes).
"""

import json
import pathlib
import tarfile

import numpy as np
import pytest
import tensorflow as tf

import larq_esbnn
from larq_esbnn import cli, models, weights
from larq_esbnn.inference import decode_predictions, load_image, preprocessing_for
from larq_esbnn.train import data as data_lib

ASSET = pathlib.Path(__file__).resolve().parent / "assets" / "cifar10_test_airplane_0000.jpg"


def _reference_probabilities(model, files):
    """What `larq-esbnn evaluate` feeds the model: the decoded uint8 image, normalised."""
    images = np.stack([tf.io.decode_jpeg(tf.io.read_file(str(f)), channels=3).numpy() for f in files])
    return tf.nn.softmax(model(data_lib.normalize(images), training=False)).numpy()


def test_predict_on_real_cifar10_test_images(cifar10_dir, tmp_path):
    names = [f"test/{c}/0007.jpg" for c in ("cat", "ship", "truck")]
    with tarfile.open(cifar10_dir / "test.tar.gz") as archive:
        for name in names:
            archive.extract(name, tmp_path, filter="data")
    files = [tmp_path / n for n in names]
    model = models.get("es_g_resnet20", weights="cifar10")
    results = larq_esbnn.predict("es_g_resnet20", "cifar10", files, top=10, model=model)
    expected = _reference_probabilities(model, files)
    for preds, probs, name in zip(results, expected, names):
        print(name, [(p.name, round(p.probability, 4)) for p in preds[:5]])
        assert sorted(p.name for p in preds) == sorted(weights.CIFAR10_CLASSES)
        assert [p.probability for p in preds] == sorted((p.probability for p in preds), reverse=True)
        assert sum(p.probability for p in preds) == pytest.approx(1.0, abs=1e-5)
        for p in preds:
            assert p.probability == pytest.approx(float(probs[p.index]), abs=1e-6)
            assert p.name == weights.CIFAR10_CLASSES[p.index]


def test_cli_predict_on_the_shipped_image(capsys):
    assert cli.main(["predict", "resnet20", "--weights", "cifar10", str(ASSET)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("resnet20, weights cifar10: CIFAR-10 preprocessing (32x32, resize")
    assert lines[1] == str(ASSET) and len(lines) == 7
    ranked = [line.split() for line in lines[2:]]
    assert [r[0] for r in ranked] == ["1.", "2.", "3.", "4.", "5."]
    assert {r[1] for r in ranked} <= set(weights.CIFAR10_CLASSES)
    probs = [float(r[2]) for r in ranked]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001

    tf.keras.backend.clear_session()
    assert cli.main(["predict", "resnet20", "--weights", "cifar10", "--json", "--top", "3", str(ASSET), str(ASSET)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 2 and len(rows[0]["top"]) == 3
    # the same image twice in one batch: same classes, probabilities equal to float error
    # (the two batch positions can take different kernel paths)
    for a, b in zip(rows[0]["top"], rows[1]["top"]):
        assert a["index"] == b["index"] and a["probability"] == pytest.approx(b["probability"], rel=1e-5)
    top1 = rows[0]["top"][0]
    assert top1["name"] == ranked[0][1] and top1["probability"] == pytest.approx(probs[0], abs=1e-4)
    model = models.get("resnet20", weights="cifar10")
    assert top1["probability"] == pytest.approx(float(_reference_probabilities(model, [ASSET]).max()), abs=1e-6)

    assert cli.main(["predict", "resnet20", "--weights", "cifar10", "/no/such/image.jpg"]) == 2
    assert "cannot read image /no/such/image.jpg" in capsys.readouterr().err


def test_imagenet_classes_and_decoding():
    prep = weights.IMAGENET
    names, labels = prep.class_names(), prep.class_labels()
    assert len(names) == len(labels) == 1000 and len(set(labels)) == 1000
    assert labels == sorted(labels)  # ImageFolder order of the releases
    assert (labels[0], names[0]) == ("n01440764", "tench")
    assert (labels[1], names[1]) == ("n01443537", "goldfish")
    probs = np.full((1, 1000), 0.5 / 997)
    probs[0, [1, 2, 999]] = [0.3, 0.15, 0.05]
    top = decode_predictions(probs, prep, top=3)[0]
    assert [(p.index, p.label, p.name) for p in top] == [
        (1, "n01443537", "goldfish"), (2, "n01484850", "great_white_shark"), (999, labels[999], names[999])]
    with pytest.raises(ValueError, match=r"shape \(images, 1000\)"):
        decode_predictions(np.ones((1, 10)), prep)


def test_imagenet_preprocessing_matches_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    path = tmp_path / "wide.png"
    tf.io.write_file(str(path), tf.io.encode_png(image))
    got = load_image(path, weights.IMAGENET)
    want = data_lib.normalize(data_lib._center(tf.cast(image, tf.float32), 224)).numpy()
    assert got.shape == (224, 224, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_preprocessing_is_found_from_the_weights():
    assert preprocessing_for("resnet20", "cifar10") is weights.CIFAR10
    assert preprocessing_for("es_resnet20", "runs/x/weights.h5") is weights.CIFAR10
    assert preprocessing_for("reactnet_a", "reactnet_a.h5") is weights.IMAGENET
    assert preprocessing_for("bcdnet_a", "checkpoint.pth.tar") is weights.IMAGENET
    assert preprocessing_for("bcdnet_b", "x.h5", dataset="imagenet") is weights.IMAGENET
    with pytest.raises(ValueError, match="pass dataset="):
        preprocessing_for("bcdnet_b", "x.h5")
    with pytest.raises(ValueError, match="dataset must be one of"):
        preprocessing_for("resnet20", "cifar10", dataset="mnist")


def test_predict_with_a_pytorch_checkpoint(tmp_path, monkeypatch):
    """ImageNet path end to end: a released-layout reactnet_18 checkpoint, 224 x 224 input."""
    torch = pytest.importorskip("torch")
    from test_torch_import import random_state_dict, released_shapes

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    sd = random_state_dict(released_shapes("reactnet_18"), seed=12)
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in sd.items()}}, ckpt)
    image = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    tf.io.write_file(str(path), tf.io.encode_png(image))
    (preds,) = larq_esbnn.predict("reactnet_18", str(ckpt), [path])
    assert len(preds) == 5 and all(p.label.startswith("n") for p in preds)
    model = models.reactnet_18(weights=str(ckpt))  # from the cache now
    logits = model(load_image(path, weights.IMAGENET)[None], training=False)
    probs = tf.nn.softmax(logits).numpy()[0]
    assert [p.index for p in preds] == list(np.argsort(-probs)[:5])
