"""Data sets for training, fine-tuning and evaluation.

``--data`` is a TFDS name (``cifar10``, ``imagenet2012``, ``caltech_birds2011``,
``oxford_flowers102``, ``stanford_dogs``, ``cars196`` ...), an image-folder
directory ``DIR/{train,test}/<class>/*.jpg`` (a directory holding
``train.tar.gz`` / ``test.tar.gz`` of that layout is extracted once into the cache),
or the unpacked archive of one of the five fine-grained data sets of BCDNet's
Table 3 (CUB-200-2011, Flowers-102, FGVC-Aircraft, Stanford Cars, Stanford Dogs;
readers in :mod:`larq_esbnn.train.finegrained`).

Small images (<= 64 px, e.g. CIFAR-10) are decoded once and cached as uint8
arrays (``.npy``); larger ones stream from disk with parallel decoding. Every
random choice (order, crop, flip) is a stateless function of (seed, epoch,
index), so epoch ``e`` sees the same batches whether or not the run was
resumed.
"""

import difflib
import hashlib
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from larq_esbnn.errors import BadArgument, BadData
from larq_esbnn.train import finegrained
from larq_esbnn.util import (
    CACHE_ENV,
    IMAGENET_MEAN,
    IMAGENET_STD,
    atomic_path,
    cache_dir,
    decode_image,
)

AUTOTUNE = tf.data.AUTOTUNE
MEAN = np.array(IMAGENET_MEAN, np.float32) * 255.0
STD = np.array(IMAGENET_STD, np.float32) * 255.0
SPLIT_ALIASES = {"test": ("test", "validation", "val"), "train": ("train",)}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# first bytes of the formats tf.io.decode_image reads (JPEG, PNG, BMP, GIF)
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"GIF8")


def normalize(images):
    """uint8 / float RGB in [0, 255] -> float32 normalised with the ImageNet mean/std
    (the convention of the released PyTorch checkpoints)."""
    return (tf.cast(images, tf.float32) - MEAN) / STD


@dataclass
class Split:
    """One split of a data set: either in-memory arrays or a list of files."""

    num_classes: int
    class_names: list
    images: np.ndarray = None  # uint8 N x H x W x 3 (small images)
    files: list = None  # paths (large images)
    labels: np.ndarray = None
    tfds: object = None  # tf.data of (image, label) from TFDS
    title: str = ""  # the data set's name where it is known (e.g. "CUB-200-2011")

    def subset(self, limit, seed=0):
        """A fixed random subset of ``limit`` examples (all classes represented), or self."""
        if not limit or limit >= len(self) or self.labels is None:
            return self
        keep = np.sort(np.random.default_rng(seed).permutation(len(self.labels))[:limit])
        return Split(
            self.num_classes, self.class_names,
            images=None if self.images is None else self.images[keep],
            files=None if self.files is None else [self.files[i] for i in keep],
            labels=self.labels[keep], title=self.title,
        )

    def __len__(self):
        if self.labels is not None:
            return len(self.labels)
        return int(self.tfds.cardinality().numpy())


def _writable_cache(sub):
    """``cache_dir() / sub``, created; an unwritable cache is a :class:`BadData` naming the variable."""
    folder = cache_dir() / sub
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadData(f"cannot create the cache folder {folder} ({err.strerror}); set {CACHE_ENV} "
                      "to a writable directory") from None
    if not os.access(folder, os.W_OK):
        raise BadData(f"the cache folder {folder} is not writable; set {CACHE_ENV} to a writable "
                      "directory")
    return folder


def _extract_archives(root, split=None):
    """If ``root`` holds ``train.tar.gz`` / ``test.tar.gz`` but no folders, extract them
    once (with ``split``, only that split's archive: evaluating needs no training images).

    Each archive goes to a temporary folder first and is moved in when complete, so a
    bad or truncated archive leaves nothing behind in the cache."""
    archives = sorted(root.glob("*.tar.gz"))
    if not archives or (root / "train").is_dir():
        return root
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    target = cache_dir() / "extracted" / f"{root.name}-{digest}"
    if split is not None:
        names = SPLIT_ALIASES.get(split, (split,))
        archives = [a for a in archives if a.name[: -len(".tar.gz")] in names] or archives
    if (target / ".complete").exists():  # every archive, extracted by an earlier version
        return target
    for archive in archives:
        done = target / f".{archive.name}.complete"
        if done.exists():
            continue
        part = pathlib.Path(tempfile.mkdtemp(dir=_writable_cache("extracted"), prefix=f".{target.name}.",
                                             suffix=".part"))
        try:
            print(f"extracting {archive} -> {target}", file=sys.stderr)  # stdout may be JSON
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(part, filter="data")
            except (tarfile.TarError, EOFError, zlib.error) as err:
                raise BadData(f"{archive} is not a readable .tar.gz archive ({type(err).__name__}: "
                              f"{err}); expected train/<class>/*.jpg and test/<class>/*.jpg inside") from None
            target.mkdir(exist_ok=True)
            for entry in part.iterdir():
                shutil.rmtree(target / entry.name, ignore_errors=True)  # an interrupted earlier move
                os.replace(entry, target / entry.name)
            done.write_text("ok")
        finally:
            shutil.rmtree(part, ignore_errors=True)
    return target


def _folder_split(root, split):
    root = _extract_archives(pathlib.Path(root), split)
    for name in SPLIT_ALIASES.get(split, (split,)):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no '{split}' folder in {root}; expected {root}/{split}/<class>/*.jpg")


def _list_folder(folder):
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{folder} has no class sub-folders")
    files, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                _check_image_file(path)
                files.append(str(path))
                labels.append(index)
    if not files:
        raise FileNotFoundError(f"{folder} has class folders but no images ({IMAGE_EXTENSIONS})")
    return classes, files, np.array(labels, np.int32)


def _check_image_file(path):
    """A :class:`BadData` naming ``path`` when it is not a JPEG / PNG / BMP / GIF file
    (checked before any work: TensorFlow's decode error would not name the file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise BadData(f"cannot read {path}: {err.strerror}") from None
    if not head.startswith(IMAGE_SIGNATURES):
        raise BadData(f"{path} is not an image file (JPEG, PNG, BMP or GIF); remove it or fix it")


def check_splits(train, test):
    """Train and test splits must name the same classes, and at least two of them."""
    if train.class_names != test.class_names:
        only_train = sorted(set(train.class_names) - set(test.class_names))
        only_test = sorted(set(test.class_names) - set(train.class_names))
        raise BadData(f"the train and test folders hold different classes ({len(train.class_names)} vs "
                      f"{len(test.class_names)}; only in train: {only_train[:5]}, only in test: "
                      f"{only_test[:5]}); both need the same class sub-folders")
    if train.num_classes < 2:
        raise BadData(f"the data has {train.num_classes} class ({train.class_names}); training a "
                      "classifier needs at least two class sub-folders")


def _decode_all(files):
    """Decode every image once (progress bar); returns uint8 N x H x W x 3."""
    ds = tf.data.Dataset.from_tensor_slices(files).map(
        lambda f: decode_image(tf.io.read_file(f)),
        num_parallel_calls=AUTOTUNE,
    )
    first = next(iter(ds.take(1))).shape
    out = np.empty((len(files), *first), np.uint8)
    for i, image in enumerate(tqdm(ds.as_numpy_iterator(), total=len(files), desc="decoding", unit="img")):
        if image.shape != first:
            raise ValueError(f"{files[i]} is {image.shape}, expected {first} like the first image")
        out[i] = image
    return out


def load_folder(root, split, small_size=64, limit=None):
    """A folder split; ``limit`` keeps the fixed subset ``Split.subset(limit)`` would,
    before any image is decoded."""
    folder = _folder_split(root, split)
    classes, files, labels = _list_folder(folder)
    if limit:
        kept = Split(len(classes), classes, files=files, labels=labels).subset(limit)
        files, labels = kept.files, kept.labels
    probe = decode_image(tf.io.read_file(files[0]))
    if max(probe.shape[:2]) > small_size:
        return Split(len(classes), classes, files=files, labels=labels)
    key = hashlib.sha256(("\n".join(files) + str(os.path.getmtime(files[-1]))).encode()).hexdigest()[:16]
    cached = cache_dir() / "arrays" / f"{folder.parent.name}-{split}-{key}.npy"
    if cached.exists():
        images = np.load(cached)
    else:
        images = _decode_all(files)
        try:  # the cache only saves the next decoding
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached, suffix=".part.npy") as tmp:
                np.save(tmp, images)
        except OSError as err:
            print(f"warning: decoded images not cached ({err.strerror}: {cached.parent}); set "
                  f"{CACHE_ENV} to a writable directory to skip decoding next time", file=sys.stderr)
    return Split(len(classes), classes, images=images, labels=labels)


def _tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(name, tfds.list_builders(), n=5, cutoff=0.5)
        hint = f"closest TFDS names: {', '.join(close)}" if close else "see tfds.list_builders()"
        raise BadData(f"--data {name!r} is neither a folder nor a TFDS name ({hint}); an image "
                      "folder needs DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg") from None


def _online(host="storage.googleapis.com", timeout=3.0):
    """True when the TFDS download host answers within ``timeout`` seconds."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_tfds(name, split, data_dir=None):
    builder = _tfds_builder(name, data_dir or os.environ.get("TFDS_DATA_DIR"))
    prepared = os.path.isdir(builder.data_dir) and any(pathlib.Path(builder.data_dir).glob("*.json"))
    if not prepared and not _online():
        raise BadData(
            f"TFDS data set {name!r} is not prepared in {builder.data_dir} and the download host does "
            "not answer (offline?); give --data an image folder (DIR/train/<class>/*.jpg, "
            "DIR/test/<class>/*.jpg), or point TFDS_DATA_DIR at a folder where it is prepared"
        )
    builder.download_and_prepare()
    splits = builder.info.splits
    candidates = SPLIT_ALIASES.get(split, (split,))
    available = [c for c in candidates if c in splits]
    if splits and not available:
        raise ValueError(f"TFDS {name!r} has no {split!r} split; it has {sorted(splits)}")
    candidate = available[0] if available else candidates[0]  # no split metadata (e.g. mocked data)
    # e.g. Flowers-102 trains on train + validation, as the folder reader does
    candidate = finegrained.TFDS_SPLITS.get(name, {}).get(split, candidate)
    ds = builder.as_dataset(split=candidate, as_supervised=True, shuffle_files=False)
    label = builder.info.features["label"]
    names = finegrained.tfds_class_names(name, builder, list(label.names))
    return Split(label.num_classes, names, tfds=ds, title=finegrained.TFDS_TITLES.get(name, name))


def load(data, split, data_dir=None, limit=None):
    """A :class:`Split` of ``data`` (a folder path or a TFDS name); ``limit``: see
    :func:`load_folder` (a TFDS split is loaded whole)."""
    if os.path.isdir(str(data)):
        listing = finegrained.read(data, split)
        if listing is not None:
            return Split(len(listing.class_names), listing.class_names, files=listing.files, labels=listing.labels,
                         title=listing.title).subset(limit)
        return load_folder(data, split, limit=limit)
    if os.path.exists(str(data)):
        raise BadArgument(f"--data {data!r} is a file; give a folder holding train/ and test/ (or "
                          "train.tar.gz / test.tar.gz), or a TFDS name")
    if os.path.sep in str(data) or str(data).startswith("."):
        raise FileNotFoundError(f"data folder {data!r} does not exist")
    return load_tfds(str(data), split, data_dir)


def _augment(image, size, seed, min_area=0.08):
    """Stateless training augmentation: pad-crop + flip at <= 64 px, random-resized
    crop (``min_area`` to all of the image, aspect 3/4 to 4/3) + flip above."""
    s1, s2 = seed + [0, 1], seed + [0, 2]
    if size <= 64:
        image = _resize_if_needed(image, size)  # large photos at a small size (arrays already fit)
        pad = size // 8
        image = tf.image.resize_with_crop_or_pad(image, size + 2 * pad, size + 2 * pad)
        image = tf.image.stateless_random_crop(image, [size, size, 3], seed=s1)
    else:
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([1, 0, 4]), seed=s1, min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(min_area, 1.0), use_image_if_no_bounding_boxes=True,
        )
        image = tf.image.resize(tf.slice(image, begin, extent), [size, size])
    return tf.image.stateless_random_flip_left_right(image, seed=s2)


def _resize_if_needed(image, size):
    """``image`` resized to size x size unless it already is (exactly unchanged then)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shape = tf.shape(image)
    return tf.cond(tf.logical_and(shape[0] == size, shape[1] == size), lambda: image,
                   lambda: tf.image.resize(image, [size, size]))


def _center(image, size):
    if image.shape[0] == size and image.shape[1] == size:
        return image
    if size <= 64:
        return _resize_if_needed(image, size)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / 0.875) / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
    return tf.image.resize_with_crop_or_pad(image, size, size)


def _source(split):
    """(image, label) pairs of a file-list or TFDS split (arrays are handled in dataset())."""
    if split.files is not None:
        def read(path, label):
            raw = tf.io.read_file(path)
            return decode_image(raw), label

        return tf.data.Dataset.from_tensor_slices((split.files, split.labels)).map(read, num_parallel_calls=AUTOTUNE)
    return split.tfds


def dataset(split, size, batch_size, training, seed=0, epoch=0, limit=None, min_crop_area=0.08):
    """Batched, normalised ``(image, one-hot label)``; ``training`` adds a
    deterministic per-epoch shuffle and augmentation, and drops the last partial batch.
    ``limit`` keeps a fixed random subset of that many examples; ``min_crop_area``:
    see :func:`_augment`."""
    split = split.subset(limit)
    n = len(split)
    if split.images is not None:
        # in-memory arrays: a numpy permutation per (seed, epoch) is cheap and exact
        order = np.random.default_rng([seed, epoch]).permutation(n) if training else np.arange(n)
        ds = tf.data.Dataset.from_tensor_slices(
            (order.astype(np.int64), (split.images[order], split.labels[order]))
        )
    else:
        ds = tf.data.Dataset.zip((tf.data.Dataset.range(n), _source(split).take(n)))
        if training:
            ds = ds.shuffle(min(n, 10_000), seed=seed * 1000 + epoch, reshuffle_each_iteration=False)

    num_classes = split.num_classes

    def prepare(index, example):
        image, label = example
        image = tf.cast(image, tf.float32)
        if training:
            image = _augment(image, size, tf.stack([tf.cast(seed * 100003 + epoch, tf.int64), index]), min_crop_area)
        else:
            image = _center(image, size)
        image = tf.ensure_shape(image, [size, size, 3])
        return normalize(image), tf.one_hot(tf.cast(label, tf.int32), num_classes)

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)
