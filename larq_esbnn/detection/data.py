"""Detection data on disk -> ``tf.data``.

A data set is a folder with one sub-folder per split (``train/``, ``test/``, or any
name given with ``--split``). A split folder holds the images (``.jpg``,
``.jpeg``, ``.png``, ``.bmp``) and their boxes in **one** of two forms:

- ``boxes.csv`` with a header line and one row per box:
  ``image,x_min,y_min,x_max,y_max,label`` (``image`` relative to the split folder,
  coordinates in pixels of that image, ``label`` a class name). An image with no
  object is listed once with the four coordinates and the label left empty;
- ``<image stem>.json`` beside each image:
  ``{"boxes": [[x_min, y_min, x_max, y_max], ...], "labels": ["cat", ...]}``.

The class list is ``classes.txt`` at the top of the data set (one name per line)
if present, else the sorted labels of the split being read. Images are resized to
the detector's square input without keeping the aspect ratio (as SSD does; boxes
are stored normalised, so they follow) and normalised with the ImageNet mean / std,
as every model of the zoo expects.
"""

import csv
import json
import pathlib
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from larq_esbnn.errors import BadData
from larq_esbnn.util import IMAGENET_MEAN, IMAGENET_STD, decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class DetectionSplit:
    """One split: image paths, pixel boxes (list of (M_i, 4) arrays), 0-based labels
    (list of (M_i,) arrays), image sizes ``(width, height)`` and the class names."""

    root: pathlib.Path
    files: list
    boxes: list
    labels: list
    sizes: list
    classes: list

    def __len__(self):
        return len(self.files)


def _image_size(path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except OSError as err:
        raise BadData(f"{path}: not a readable image ({err})") from None


def _read_csv(folder):
    path = folder / "boxes.csv"
    rows = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"image", "x_min", "y_min", "x_max", "y_max", "label"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise BadData(f"{path}: the header must name the columns {', '.join(sorted(need))}")
        for line, row in enumerate(reader, 2):
            entry = rows.setdefault(row["image"], ([], []))
            if not (row["label"] or "").strip():
                continue
            try:
                box = [float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
            except (TypeError, ValueError):
                raise BadData(f"{path}:{line}: coordinates must be numbers") from None
            entry[0].append(box)
            entry[1].append(row["label"].strip())
    return rows


def _read_json(folder, images):
    rows = {}
    for image in images:
        path = image.with_suffix(".json")
        if not path.is_file():
            raise BadData(f"{path}: missing (each image needs its JSON of boxes, or the split a boxes.csv)")
        try:
            data = json.loads(path.read_text())
            boxes, labels = data["boxes"], data["labels"]
        except (ValueError, KeyError, TypeError):
            raise BadData(f'{path}: expected {{"boxes": [[x_min, y_min, x_max, y_max], ...], '
                          f'"labels": [...]}}') from None
        if len(boxes) != len(labels):
            raise BadData(f"{path}: {len(boxes)} boxes but {len(labels)} labels")
        rows[image.name] = (boxes, [str(label) for label in labels])
    return rows


def read_classes(root):
    """``classes.txt`` at the top of data set ``root``, or None."""
    path = pathlib.Path(root) / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise BadData(f"{path}: class names repeat")
    return names


def load_split(root, split, classes=None):
    """Read split ``split`` of data set ``root`` (see the module docstring)."""
    root = pathlib.Path(root).expanduser()
    folder = root / split
    if not folder.is_dir():
        raise BadData(f"{folder}: no such split folder (expected {root}/{split}/ with images and boxes)")
    if (folder / "boxes.csv").is_file():
        rows = _read_csv(folder)
    else:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise BadData(f"{folder}: no images and no boxes.csv")
        rows = _read_json(folder, images)
    if not rows:
        raise BadData(f"{folder}: no images listed")
    classes = list(classes or read_classes(root) or sorted({lb for _, labels in rows.values() for lb in labels}))
    if not classes:
        raise BadData(f"{folder}: no labelled boxes, and no classes.txt in {root}")
    index = {name: i for i, name in enumerate(classes)}
    split_data = DetectionSplit(folder, [], [], [], [], classes)
    for name in sorted(rows):
        path = folder / name
        if not path.is_file():
            raise BadData(f"{folder}: listed image {name} does not exist")
        width, height = _image_size(path)
        boxes, labels = rows[name]
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise BadData(f"{path}: labels {', '.join(unknown)} are not among the classes {', '.join(classes)}")
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(b) and (np.any(b[:, 2] <= b[:, 0]) or np.any(b[:, 3] <= b[:, 1]) or np.any(b < -1)
                       or np.any(b[:, [0, 2]] > width + 1) or np.any(b[:, [1, 3]] > height + 1)):
            raise BadData(f"{path}: a box is empty or outside the {width}x{height} image "
                          "(boxes are x_min, y_min, x_max, y_max in pixels)")
        split_data.files.append(str(path))
        split_data.boxes.append(b)
        split_data.labels.append(np.asarray([index[lb] for lb in labels], np.int32))
        split_data.sizes.append((width, height))
    return split_data


def _padded(split, max_boxes=None):
    most = max([len(b) for b in split.boxes] + [1])
    m = max_boxes or most
    boxes = np.zeros((len(split), m, 4), np.float32)
    labels = np.full((len(split), m), -1, np.int32)
    for i, (b, lb, (w, h)) in enumerate(zip(split.boxes, split.labels, split.sizes)):
        n = min(len(b), m)
        boxes[i, :n] = b[:n] / np.asarray([w, h, w, h], np.float32)
        labels[i, :n] = lb[:n]
    return boxes, labels


def preprocess(image, size):
    """uint8 image (H, W, 3) -> float32 (size, size, 3), ImageNet mean / std."""
    image = tf.image.resize(tf.cast(image, tf.float32), (size, size))
    return (image - tf.constant(IMAGENET_MEAN) * 255.0) / (tf.constant(IMAGENET_STD) * 255.0)


def dataset(split, size, batch_size, training=False, seed=0):
    """``(image, boxes, labels)`` batches: boxes (B, M, 4) normalised, labels (B, M),
    padded with -1. ``training``: shuffled, repeated, random horizontal flips."""
    boxes, labels = _padded(split)
    ds = tf.data.Dataset.from_tensor_slices((split.files, boxes, labels))
    if training:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True).repeat()

    def load(path, b, lb):
        image = decode_image(tf.io.read_file(path))
        image = preprocess(image, size)
        if training:
            flip = tf.random.uniform(()) < 0.5
            image = tf.where(flip, image[:, ::-1], image)
            flipped = tf.stack([1.0 - b[:, 2], b[:, 1], 1.0 - b[:, 0], b[:, 3]], -1)
            b = tf.where(flip, flipped, b)
        return image, b, lb

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
