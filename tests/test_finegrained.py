"""The five fine-grained data sets of BCDNet's Table 3 (issue 33): readers on fake copies of
their layouts, the TFDS path on mocked data, fine-tuning with a recipe, then `predict`."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from larq_esbnn import cli
from larq_esbnn.errors import BadArgument, BadData
from larq_esbnn.train import data as data_lib
from larq_esbnn.train import finegrained
from larq_esbnn.train.recipe import Recipe

sio = pytest.importorskip("scipy.io")

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LARQ_ESBNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LARQ_ESBNN_QUIET", "1")


def jpeg(path, label, seed, shape=(36, 44)):
    """A small JPEG whose colour says its class (so a few steps learn something)."""
    rng = np.random.default_rng(seed)
    image = np.clip(np.array(COLORS[label % 3]) + rng.normal(0, 30, (*shape, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_jpeg(image))
    return path


def _cell(strings, column=False):
    array = np.array(strings, dtype=object)
    return array.reshape(-1, 1) if column else array.reshape(1, -1)


# ---------------------------------------------------------------- fake layouts


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def make_cub(root, train=4, test=2):
    """CUB_200_2011/: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/."""
    root = root / "CUB_200_2011"
    images, labels, split = [], [], []
    image_id = 0
    for c, name in enumerate(CUB_CLASSES):
        for i in range(train + test):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{i:04d}_{image_id}.jpg"
            jpeg(root / "images" / rel, c, image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {1 if i < train else 0}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CUB_CLASSES, 1)))
    return root


def make_flowers(root):
    """jpg/image_%05d.jpg, imagelabels.mat (labels 1..102), setid.mat (trnid, valid, tstid)."""
    labels = [1, 2, 3, 1, 2, 3, 77, 1, 2, 3, 77, 102]
    for i, label in enumerate(labels, 1):
        jpeg(root / "jpg" / f"image_{i:05d}.jpg", label, i)
    sio.savemat(root / "imagelabels.mat", {"labels": np.array([labels], np.uint8)})
    sio.savemat(root / "setid.mat", {"trnid": np.array([[1, 2, 3, 7]], np.uint16),
                                     "valid": np.array([[4, 5, 6]], np.uint16),
                                     "tstid": np.array([[8, 9, 10, 11, 12]], np.uint16)})
    return root


AIRCRAFT_VARIANTS = ["707-320", "A300B4", "Cessna 172"]


def make_aircraft(root):
    """fgvc-aircraft-2013b/data/: variants.txt, images_variant_{trainval,test}.txt, images/."""
    data = root / "fgvc-aircraft-2013b" / "data"
    rows = {"trainval": [], "test": []}
    for k in range(12):
        image_id = f"{1000000 + k:07d}"
        label = k % 3
        jpeg(data / "images" / f"{image_id}.jpg", label, k)
        rows["trainval" if k < 9 else "test"].append(f"{image_id} {AIRCRAFT_VARIANTS[label]}")
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("\n".join(AIRCRAFT_VARIANTS) + "\n")
    for split, lines in rows.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def _car_annotations(fnames, classes):
    records = np.zeros(len(fnames), dtype=[(f, "O") for f in
                                           ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")])
    for i, (name, c) in enumerate(zip(fnames, classes)):
        records[i] = (1, 1, 30, 30, c, name)
    return {"annotations": records.reshape(1, -1)}


def make_cars(root):
    """devkit/{cars_meta,cars_train_annos}.mat, cars_test_annos_withlabels.mat, cars_train/, cars_test/."""
    (root / "devkit").mkdir(parents=True)
    sio.savemat(root / "devkit" / "cars_meta.mat", {"class_names": _cell(CAR_NAMES)})
    for split, n in (("train", 9), ("test", 6)):
        names = [f"{i + 1:05d}.jpg" for i in range(n)]
        classes = [i % 3 + 1 for i in range(n)]
        for name, c in zip(names, classes):
            jpeg(root / f"cars_{split}" / name, c - 1, hash((split, name)) % 1000)
        target = root / "devkit" / "cars_train_annos.mat" if split == "train" else \
            root / "cars_test_annos_withlabels.mat"
        sio.savemat(target, _car_annotations(names, classes))
    return root


DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def make_dogs(root):
    """Images/<wnid>-<breed>/, train_list.mat and test_list.mat (file_list, labels)."""
    for split, n in (("train", 3), ("test", 2)):
        files, labels = [], []
        for c, folder in enumerate(DOG_FOLDERS):
            for i in range(n):
                rel = f"{folder}/{folder.split('-')[0]}_{split}{i}.jpg"
                jpeg(root / "Images" / rel, c, hash(rel) % 1000)
                files.append(rel)
                labels.append(c + 1)
        sio.savemat(root / f"{split}_list.mat", {"file_list": _cell(files, column=True),
                                                 "annotation_list": _cell([f[:-4] for f in files], column=True),
                                                 "labels": np.array(labels, float).reshape(-1, 1)})
    return root


# ---------------------------------------------------------------- readers


def _both(folder):
    train, test = data_lib.load(str(folder), "train"), data_lib.load(str(folder), "test")
    data_lib.check_splits(train, test)
    for split in (train, test):
        assert all(pathlib.Path(f).is_file() for f in split.files)
        assert split.labels.dtype == np.int32 and len(split.labels) == len(split.files)
    return train, test


def test_cub_reader(tmp_path):
    make_cub(tmp_path)
    train, test = _both(tmp_path)  # the parent of CUB_200_2011/ is recognised too
    assert train.title == "CUB-200-2011"
    assert train.class_names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert (len(train), len(test)) == (12, 6)
    for split in (train, test):  # each image sits in the folder of its class
        for f, label in zip(split.files, split.labels):
            assert pathlib.Path(f).parent.name == CUB_CLASSES[label]
    assert data_lib.load(str(tmp_path / "CUB_200_2011"), "train").files == train.files


def test_flowers102_reader(tmp_path):
    make_flowers(tmp_path)
    train, test = _both(tmp_path)
    assert train.num_classes == 102 and train.class_names[0] == "pink primrose"
    assert train.class_names[101] == "blackberry lily"
    # train = trnid + valid, test = tstid; label k of imagelabels.mat is class k - 1
    assert [pathlib.Path(f).name for f in train.files] == [f"image_{i:05d}.jpg" for i in (1, 2, 3, 7, 4, 5, 6)]
    assert train.labels.tolist() == [0, 1, 2, 76, 0, 1, 2]
    assert test.labels.tolist() == [0, 1, 2, 76, 101]


def test_aircraft_reader(tmp_path):
    make_aircraft(tmp_path)
    train, test = _both(tmp_path)  # found in fgvc-aircraft-2013b/data
    assert train.class_names == AIRCRAFT_VARIANTS and (len(train), len(test)) == (9, 3)
    assert train.labels.tolist() == [0, 1, 2] * 3
    assert pathlib.Path(test.files[0]).name == "1000009.jpg"
    # without trainval: train + val
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    lines = (data / "images_variant_trainval.txt").read_text().splitlines()
    (data / "images_variant_trainval.txt").unlink()
    (data / "images_variant_train.txt").write_text("\n".join(lines[:5]) + "\n")
    (data / "images_variant_val.txt").write_text("\n".join(lines[5:]) + "\n")
    assert data_lib.load(str(data), "train").files == train.files


def test_cars_reader(tmp_path):
    make_cars(tmp_path)
    train, test = _both(tmp_path)
    assert train.class_names == CAR_NAMES and (len(train), len(test)) == (9, 6)
    assert train.labels.tolist() == [0, 1, 2] * 3
    assert pathlib.Path(test.files[0]).parent.name == "cars_test"
    # the labelled test list may also sit in devkit/
    (tmp_path / "cars_test_annos_withlabels.mat").rename(tmp_path / "devkit" / "cars_test_annos_withlabels.mat")
    assert data_lib.load(str(tmp_path), "test").files == test.files


def test_dogs_reader(tmp_path):
    make_dogs(tmp_path)
    train, test = _both(tmp_path)
    assert train.class_names == ["Chihuahua", "Japanese_spaniel", "Maltese_dog"]
    assert (len(train), len(test)) == (9, 6) and train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("make, remove, name", [
    (make_cub, "CUB_200_2011/train_test_split.txt", "train_test_split.txt"),
    (make_cub, "CUB_200_2011/classes.txt", "classes.txt"),
    (make_flowers, "setid.mat", "setid.mat"),
    (make_aircraft, "fgvc-aircraft-2013b/data/images_variant_test.txt", "images_variant_test.txt"),
    (make_cars, "devkit/cars_meta.mat", "cars_meta.mat"),
    (make_cars, "cars_test_annos_withlabels.mat", "cars_test_annos_withlabels.mat"),
    (make_dogs, "test_list.mat", "test_list.mat"),
])
def test_an_incomplete_folder_names_the_missing_file(tmp_path, make, remove, name):
    make(tmp_path)
    (tmp_path / remove).unlink()
    with pytest.raises(BadData, match=rf"looks like .* but the file \S*{name} is missing") as err:
        data_lib.load(str(tmp_path), "train")
    assert "\n" not in str(err.value)


def test_missing_images_and_bad_lists(tmp_path):
    root = make_cub(tmp_path)
    (root / "images" / CUB_CLASSES[0]).rename(root / "elsewhere")
    with pytest.raises(BadData, match=r"4 of 12 listed images are missing, e.g. .*Black_footed"):
        data_lib.load(str(root), "train")
    (root / "elsewhere").rename(root / "images" / CUB_CLASSES[0])
    (root / "image_class_labels.txt").write_text("1 1\n")
    with pytest.raises(BadData, match="image_class_labels.txt does not list image 2"):
        data_lib.load(str(root), "train")
    flowers = make_flowers(tmp_path / "flowers")
    (flowers / "setid.mat").write_bytes(b"not a mat file")
    with pytest.raises(BadData, match="setid.mat is not a readable MATLAB .mat file"):
        data_lib.load(str(flowers), "train")


def test_plain_image_folders_are_not_taken_for_a_layout(tmp_path):
    for split in ("train", "test"):
        for c in range(2):
            jpeg(tmp_path / split / f"c{c}" / "0.jpg", c, c)
    (tmp_path / "classes.txt").write_text("a note\n")
    assert finegrained.detect(tmp_path) is None
    assert data_lib.load(str(tmp_path), "train").class_names == ["c0", "c1"]


# ---------------------------------------------------------------- TFDS


@pytest.mark.parametrize("name, classes", [("caltech_birds2011", 200), ("oxford_flowers102", 102),
                                           ("cars196", 196), ("stanford_dogs", 120)])
def test_tfds_names_with_mock_data(monkeypatch, name, classes):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data_lib, "_online", lambda *args, **kwargs: True)
    splits, builder_of = [], data_lib._tfds_builder

    def recording(*args):  # the splits asked of TFDS (mocked data has any split asked for)
        builder = builder_of(*args)
        as_dataset = builder.as_dataset
        builder.as_dataset = lambda **kwargs: splits.append(kwargs["split"]) or as_dataset(**kwargs)
        return builder

    monkeypatch.setattr(data_lib, "_tfds_builder", recording)
    with tfds.testing.mock_data(num_examples=6):
        train, test = data_lib.load(name, "train"), data_lib.load(name, "test")
        data_lib.check_splits(train, test)
        assert train.num_classes == classes == len(train.class_names)
        assert train.title == finegrained.TFDS_TITLES[name]
        if name == "oxford_flowers102":
            assert train.class_names[:2] == ["pink primrose", "hard-leaved pocket orchid"]
            assert splits == ["train+validation", "test"]  # as the folder reader: train + val
        else:
            assert splits[0] == "train" and splits[-1] == "test"
        if name == "cars196":
            assert train.class_names[0] == "AM General Hummer SUV 2000"
        x, y = next(iter(data_lib.dataset(train, 32, 2, True)))
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, classes)


# ---------------------------------------------------------------- fine-tuning


def test_finegrained_recipes_load():
    recipes = sorted((ROOT / "training" / "finegrained").glob("*.toml"))
    assert [p.stem for p in recipes] == ["aircraft", "cars", "cub200", "dogs", "flowers102"]
    for path in recipes:
        recipe = Recipe.load(path)
        assert recipe.model == "bcdnet_a" and recipe.image_size == 224 and len(recipe.steps) == 1
        assert recipe.teacher == "" and not recipe.teachers and 0 < recipe.backbone_lr_scale < 1
    with pytest.raises(BadArgument, match="backbone_lr_scale must be in"):
        Recipe.from_dict({"model": "resnet20", "data": "x", "backbone_lr_scale": 2, "steps": [{"epochs": 1, "lr": 1}]})


def test_backbone_learning_rate_scale():
    from larq_esbnn.train.trainer import FusedAdamW, scale_backbone_lr

    inputs = tf.keras.Input((4,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(3, name="head_fc")(
        tf.keras.layers.Dense(5, name="body")(inputs)))
    before = [w.numpy() for w in model.trainable_weights]
    optimizer = FusedAdamW(learning_rate=0.01, weight_decay=0.0)
    optimizer.build(model.trainable_variables)
    scale_backbone_lr(optimizer, model, 0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(tf.ones((2, 4))) ** 2)
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    # Adam's first step moves every weight by ~lr: 0.01 in the head, 0.001 in the body
    steps = {w.name.split("/")[0]: np.abs(w.numpy() - b).max() for w, b in zip(model.trainable_weights, before)}
    assert steps["head_fc"] == pytest.approx(0.01, rel=1e-3)
    assert steps["body"] == pytest.approx(0.001, rel=1e-3)


def test_finetune_a_fake_cub_with_its_recipe_then_predict_and_evaluate(tmp_path, capsys):
    root = make_cub(tmp_path / "data", train=8, test=2)
    out = tmp_path / "run"
    code = cli.main(["finetune", "resnet20", "--recipe", str(ROOT / "training" / "finegrained" / "cub200.toml"),
                     "--weights", "cifar10", "--data", str(root), "--image-size", "32", "--epochs", "1",
                     "--batch-size", "8", "--output", str(out)])
    assert code == 0
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["backbone_lr_scale"] == 0.1 and recipe["min_crop_area"] == 0.25 and recipe["image_size"] == 32
    prep = json.loads((out / "preprocessing.json").read_text())
    assert prep["dataset"] == "fine-tuned on CUB-200-2011" and prep["input_size"] == 32
    assert prep["classes"] == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    capsys.readouterr()

    image = sorted((root / "images" / CUB_CLASSES[2]).iterdir())[-1]
    assert cli.main(["predict", "resnet20", "--weights", str(out / "weights.h5"), "--top", "3", str(image)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "fine-tuned on CUB-200-2011 preprocessing (32x32" in lines[0]
    assert sorted(line.split()[1] for line in lines[2:]) == prep["classes"]

    assert cli.main(["evaluate", "resnet20", "--weights", str(out / "weights.h5"), "--data", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 6 and result == {k: json.loads((out / "metrics.json").read_text())[k] for k in result}

    assert cli.main(["predict", "es_resnet20", "--weights", str(out / "weights.h5"), str(image)]) == 2
    assert "are weights of resnet20 (its run's recipe.json), not es_resnet20" in capsys.readouterr().err


def test_finetune_argument_errors(tmp_path, capsys):
    """Refused before any training (the from-scratch path itself runs in
    training/cifar10_transfer.py; a run costs a training-step trace)."""
    root = make_cub(tmp_path / "data", train=2, test=1)
    assert cli.main(["finetune", "resnet20", "--weights", "none", "--freeze-backbone", "--data", str(root),
                     "--output", str(tmp_path / "frozen")]) == 2
    assert "a frozen backbone" in capsys.readouterr().err
    assert not (tmp_path / "frozen").exists()
    assert cli.main(["finetune", "--weights", "cifar10", "--output", str(tmp_path / "x")]) == 2
    assert "finetune needs MODEL and --data, or --recipe FILE" in capsys.readouterr().err
    assert cli.main(["finetune", "resnet20", "--recipe", str(ROOT / "training" / "finegrained" / "cub200.toml"),
                     "--weights", "cifar10", "--backbone-lr-scale", "1.5", "--output", str(tmp_path / "y")]) == 2
    assert "backbone_lr_scale must be in [0, 1], got 1.5" in capsys.readouterr().err
