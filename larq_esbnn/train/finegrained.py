"""The five fine-grained data sets of BCDNet's Table 3, read as their archives unpack.

``--data FOLDER`` is recognised by the list files in it (or in one sub-folder, e.g.
the ``CUB_200_2011/`` a ``.tgz`` unpacks to):

=================  =====================================================================
CUB-200-2011       ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
                   ``classes.txt``, ``images/``: the official 5,994 / 5,794 split
Flowers-102        ``imagelabels.mat``, ``setid.mat``, ``jpg/``: train = ``trnid`` +
                   ``valid`` (2,040 images), test = ``tstid`` (6,149); names from
                   ``larq_esbnn/pretrained/flowers102_classes.txt`` (the archive has none)
FGVC-Aircraft      ``data/images_variant_trainval.txt`` (else ``_train`` + ``_val``),
                   ``data/images_variant_test.txt``, ``data/images/``: 100 variants
Stanford Cars      ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``,
                   ``cars_test_annos_withlabels.mat`` (in the folder or ``devkit/``),
                   ``cars_train/``, ``cars_test/``: 8,144 / 8,041 images, 196 classes
Stanford Dogs      ``train_list.mat``, ``test_list.mat`` (else ``lists/``), ``Images/``:
                   12,000 / 8,580 images, 120 breeds named after their folders
=================  =====================================================================

A folder that holds some of a layout's files but not all of them is a
:class:`~larq_esbnn.errors.BadData` naming the first missing file. Every reader
returns class names in label order, image paths and 0-based labels; images are
not opened here (:func:`larq_esbnn.train.data.dataset` decodes them).

The TFDS builders of four of them (``caltech_birds2011``, ``oxford_flowers102``,
``cars196``, ``stanford_dogs``) go through :func:`larq_esbnn.train.data.load_tfds`;
:data:`TFDS_SPLITS` and :func:`tfds_class_names` keep their splits and class names
in line with these readers.
"""

import os
import pathlib
import re
from dataclasses import dataclass

import numpy as np

from larq_esbnn.errors import BadData


@dataclass
class Listing:
    """One split of a fine-grained data set, as listed by its files."""

    title: str
    class_names: list
    files: list
    labels: np.ndarray


# the TFDS split standing for "train" / "test" where it differs from the name
TFDS_SPLITS = {"oxford_flowers102": {"train": "train+validation"}}
TFDS_TITLES = {"caltech_birds2011": "CUB-200-2011", "oxford_flowers102": "Oxford Flowers-102",
               "cars196": "Stanford Cars", "stanford_dogs": "Stanford Dogs"}


def _loadmat(path):
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:  # pragma: no cover - scipy is a dependency
        raise BadData(f"reading {path} needs scipy (pip install scipy)") from None
    try:
        return loadmat(str(path), squeeze_me=True)
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError) as err:
        raise BadData(f"{path} is not a readable MATLAB .mat file ({err})") from None


def _field(mat, key, path):
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise BadData(f"{path} has no variable {key!r} (it holds {found})")
    return mat[key]


def _strings(values):
    """A MATLAB cell array / struct field of strings -> list of str."""
    return [str(np.asarray(v).item() if np.ndim(v) else v) for v in np.atleast_1d(values)]


def _ints(values):
    return np.atleast_1d(np.asarray(values)).astype(np.int64).ravel()


def _lines(path):
    """Non-empty lines of a list file as (first word, rest) pairs."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        head, _, rest = line.strip().partition(" ")
        if not rest:
            raise BadData(f"{path}, line {number}: expected two fields separated by a space, got {line!r}")
        rows.append((head, rest.strip()))
    return rows


def _int(text, path):
    try:
        return int(text)
    except ValueError:
        raise BadData(f"{path}: expected an integer, got {text!r}") from None


def _check_files(files, root, title):
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise BadData(f"{title} in {root}: {len(missing)} of {len(files)} listed images are missing, "
                      f"e.g. {missing[0]}; unpack the whole archive")


def _labels_to_names(labels, names, where):
    labels = np.asarray(labels, np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise BadData(f"{where}: labels must be 1..{len(names)}, found {labels.min() + 1}..{labels.max() + 1}")
    return labels.astype(np.int32)


# ------------------------------------------------------------------ readers


def read_cub(root, split):
    """CUB-200-2011 (``CUB_200_2011/``)."""
    classes = sorted(((_int(i, root / "classes.txt"), name) for i, name in _lines(root / "classes.txt")))
    names = [re.sub(r"^\d+\.", "", name) for _, name in classes]  # "001.Black_footed_Albatross"
    index = {number: k for k, (number, _) in enumerate(classes)}
    paths = {i: p for i, p in _lines(root / "images.txt")}
    labels = {i: _int(c, root / "image_class_labels.txt") for i, c in _lines(root / "image_class_labels.txt")}
    wanted = "1" if split == "train" else "0"
    files, out = [], []
    for image_id, is_train in _lines(root / "train_test_split.txt"):
        if is_train != wanted:
            continue
        if image_id not in paths or image_id not in labels:
            missing = "images.txt" if image_id not in paths else "image_class_labels.txt"
            raise BadData(f"{root / missing} does not list image {image_id} of train_test_split.txt")
        if labels[image_id] not in index:
            raise BadData(f"{root / 'image_class_labels.txt'}: image {image_id} has class {labels[image_id]}, "
                          f"which classes.txt does not name")
        files.append(str(root / "images" / paths[image_id]))
        out.append(index[labels[image_id]])
    return Listing("CUB-200-2011", names, files, np.array(out, np.int32))


def flowers102_names():
    from larq_esbnn.weights import _read_classes

    return [name for _, name in _read_classes("flowers102_classes.txt")]


def read_flowers102(root, split):
    """Oxford Flowers-102 (``jpg/``, ``imagelabels.mat``, ``setid.mat``)."""
    labels = _ints(_field(_loadmat(root / "imagelabels.mat"), "labels", root / "imagelabels.mat"))
    sets = _loadmat(root / "setid.mat")
    keys = ("trnid", "valid") if split == "train" else ("tstid",)
    ids = np.concatenate([_ints(_field(sets, k, root / "setid.mat")) for k in keys])
    if ids.size and (ids.min() < 1 or ids.max() > labels.size):
        raise BadData(f"{root / 'setid.mat'} lists image ids up to {ids.max()}, but imagelabels.mat labels "
                      f"{labels.size} images")
    names = flowers102_names()
    out = _labels_to_names(labels[ids - 1] - 1, names, root / "imagelabels.mat")
    files = [str(root / "jpg" / f"image_{i:05d}.jpg") for i in ids]
    return Listing("Oxford Flowers-102", names, files, out)


def _aircraft_lists(root, split):
    if split != "train":
        return [root / "images_variant_test.txt"]
    if (root / "images_variant_trainval.txt").is_file():
        return [root / "images_variant_trainval.txt"]
    return [root / "images_variant_train.txt", root / "images_variant_val.txt"]


def read_aircraft(root, split):
    """FGVC-Aircraft at the variant level (``fgvc-aircraft-2013b/data/``): trainval / test."""
    if (root / "variants.txt").is_file():
        names = [line.strip() for line in (root / "variants.txt").read_text().splitlines() if line.strip()]
    else:  # the variants of both splits, sorted
        names = sorted({v for s in ("train", "test") for p in _aircraft_lists(root, s) for _, v in _lines(p)})
    index = {name: k for k, name in enumerate(names)}
    files, out = [], []
    for path in _aircraft_lists(root, split):
        for image_id, variant in _lines(path):
            if variant not in index:
                raise BadData(f"{path}: variant {variant!r} of image {image_id} is not in variants.txt")
            files.append(str(root / "images" / f"{image_id}.jpg"))
            out.append(index[variant])
    return Listing("FGVC-Aircraft (variants)", names, files, np.array(out, np.int32))


def _cars_test_annos(root):
    for where in (root / "cars_test_annos_withlabels.mat", root / "devkit" / "cars_test_annos_withlabels.mat"):
        if where.is_file():
            return where
    return root / "cars_test_annos_withlabels.mat"


def read_cars(root, split):
    """Stanford Cars (``devkit/``, ``cars_train/``, ``cars_test/``)."""
    meta = root / "devkit" / "cars_meta.mat"
    names = _strings(_field(_loadmat(meta), "class_names", meta))
    annos = root / "devkit" / "cars_train_annos.mat" if split == "train" else _cars_test_annos(root)
    records = _field(_loadmat(annos), "annotations", annos)
    if records.dtype.names is None or not {"fname", "class"} <= set(records.dtype.names):
        raise BadData(f"{annos}: 'annotations' must be a struct array with fields fname and class "
                      "(the test file without labels, cars_test_annos.mat, cannot be used for evaluation)")
    records = np.atleast_1d(records)
    folder = root / ("cars_train" if split == "train" else "cars_test")
    files = [str(folder / name) for name in _strings(records["fname"])]
    out = _labels_to_names(_ints(records["class"]) - 1, names, annos)
    return Listing("Stanford Cars", names, files, out)


def _dogs_list(root, split):
    name = f"{split}_list.mat"
    return root / name if (root / name).is_file() or not (root / "lists" / name).is_file() else root / "lists" / name


def read_dogs(root, split):
    """Stanford Dogs (``Images/<wnid>-<breed>/``, ``train_list.mat`` / ``test_list.mat``).

    Label k is the k-th breed folder in sorted order, as the lists number them;
    the class name is the folder name without its WordNet ID (``Chihuahua``)."""
    path = _dogs_list(root, split)
    mat = _loadmat(path)
    rel = _strings(_field(mat, "file_list", path))
    labels = _ints(_field(mat, "labels", path)) - 1
    if len(rel) != labels.size:
        raise BadData(f"{path}: {len(rel)} files but {labels.size} labels")
    folders = sorted(p.name for p in (root / "Images").iterdir() if p.is_dir())
    names = [re.sub(r"^n\d+-", "", f) for f in folders]
    out = _labels_to_names(labels, names, path)
    for r, label in zip(rel, out):
        if r.split("/")[0] != folders[label]:
            raise BadData(f"{path}: {r} has label {label + 1}, but the {label + 1}-th breed folder of "
                          f"{root / 'Images'} is {folders[label]}")
    files = [str(root / "Images" / r) for r in rel]
    return Listing("Stanford Dogs", names, files, out)


# ------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class Layout:
    name: str
    markers: tuple  # any of these present: the folder is meant to be this layout
    required: object  # callable root -> the paths every split needs, in order
    reader: object


def _cub_required(root):
    return [root / n for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
                               "images")]


def _flowers_required(root):
    return [root / "imagelabels.mat", root / "setid.mat", root / "jpg"]


def _aircraft_required(root):
    lists = _aircraft_lists(root, "train") + _aircraft_lists(root, "test")
    return [*lists, root / "images"]


def _cars_required(root):
    return [root / "devkit" / "cars_meta.mat", root / "devkit" / "cars_train_annos.mat", _cars_test_annos(root),
            root / "cars_train", root / "cars_test"]


def _dogs_required(root):
    return [_dogs_list(root, "train"), _dogs_list(root, "test"), root / "Images"]


LAYOUTS = (
    Layout("CUB-200-2011", ("images.txt", "train_test_split.txt", "image_class_labels.txt"), _cub_required,
           read_cub),
    Layout("Oxford Flowers-102", ("imagelabels.mat", "setid.mat"), _flowers_required, read_flowers102),
    Layout("FGVC-Aircraft", ("variants.txt", "images_variant_test.txt", "images_variant_trainval.txt",
                             "images_variant_train.txt"), _aircraft_required, read_aircraft),
    Layout("Stanford Cars", ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat",
                             "cars_train", "cars_test"), _cars_required, read_cars),
    Layout("Stanford Dogs", ("train_list.mat", "test_list.mat", "lists/train_list.mat", "file_list.mat"),
           _dogs_required, read_dogs),
)


def _match(root):
    return [layout for layout in LAYOUTS if any((root / m).exists() for m in layout.markers)]


def detect(folder):
    """``(layout, root)`` of the fine-grained data set in ``folder`` (or in one of its
    sub-folders, or ``sub/data`` for FGVC-Aircraft), or None when there is none.

    A folder with some of a layout's files but not all is a :class:`BadData`
    naming the missing file; an image folder (``train/``) is never a fine-grained layout."""
    folder = pathlib.Path(folder)
    if (folder / "train").is_dir() or list(folder.glob("*.tar.gz")):
        return None
    candidates = [folder, folder / "data"]
    if not _match(folder) and not _match(folder / "data"):
        subs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        candidates = [x for s in subs for x in (s, s / "data")]
    found = [(layout, root) for root in candidates if root.is_dir() for layout in _match(root)]
    if not found:
        return None
    if len({layout.name for layout, _ in found}) > 1:
        names = ", ".join(sorted({f"{layout.name} ({root})" for layout, root in found}))
        raise BadData(f"--data {folder} holds files of several data sets: {names}; give one of their folders")
    layout, root = found[0]
    for path in layout.required(root):
        if not path.exists():
            kind = "folder" if not path.suffix else "file"
            raise BadData(f"--data {folder} looks like {layout.name} but the {kind} {path} is missing; "
                          f"{layout.name} needs {', '.join(str(p.relative_to(root)) for p in layout.required(root))} "
                          f"in {root}")
    return layout, root


def read(folder, split):
    """The :class:`Listing` of ``split`` (``"train"`` or ``"test"``) of the data set in
    ``folder``, or None when ``folder`` holds none of the five layouts."""
    found = detect(folder)
    if found is None:
        return None
    layout, root = found
    if split not in ("train", "test"):
        raise BadData(f"{layout.name} has the splits 'train' and 'test', not {split!r}")
    listing = layout.reader(root, split)
    if not listing.files:
        raise BadData(f"{layout.name} in {root}: the {split} split lists no images")
    if len(set(listing.labels.tolist())) < 2 and split == "train":
        raise BadData(f"{layout.name} in {root}: the train split has fewer than two classes")
    _check_files(listing.files, root, layout.name)
    return listing


def tfds_class_names(name, builder, names):
    """Class names of a TFDS builder: ``names`` (its ``ClassLabel``) unless they are bare
    numbers and the examples carry a ``label_name`` (``caltech_birds2011``), which is then
    read once from the train split (images are not decoded)."""
    features = builder.info.features
    if not all(n.isdigit() for n in names) or "label_name" not in features:
        return list(names)
    key = (name, str(builder.data_dir))
    if key not in _TFDS_NAMES:  # read once per process (train and test need them)
        _TFDS_NAMES[key] = _scan_label_names(builder, names)
    return list(_TFDS_NAMES[key])


_TFDS_NAMES = {}


def _scan_label_names(builder, names):
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split="train", decoders=tfds.decode.PartialDecoding({"label": True, "label_name": True}))
    found = {}
    for example in ds.as_numpy_iterator():
        found.setdefault(int(example["label"]), example["label_name"].decode())
        if len(found) == len(names):
            break
    return [re.sub(r"^\d+\.", "", found.get(i, n)) for i, n in enumerate(names)]
