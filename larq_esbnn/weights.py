"""Pretrained weights: one registry, verified cached downloads, checked loading.

``weights=`` of every model factory accepts ``None``, a registered tag
(``"cifar10"``, ``"imagenet"`` ...), a local ``.h5`` path, a PyTorch checkpoint
(``.pth``, ``.pth.tar``, ``.pt``), or an ``http(s)://`` / ``file://`` URL
(optionally ending in ``#sha256=<64 hex digits>`` to verify it). Files are Keras
HDF5 weight files as written by ``model.save_weights("x.h5")`` (``larq-esbnn
import-torch`` writes the same format).

Adding weights to the registry
------------------------------
A CIFAR-10 file trained here is a record in ``larq_esbnn/pretrained/trained_here.json``
(model, sha256, top-1, recipe) with the file beside it as
``larq_esbnn/pretrained/<model>_cifar10.h5``; ``python zoo/collect_cifar10.py
RUNS --ship`` (and ``zoo/continue_cifar10.py``) copies the file and writes the
record, so shipping needs no edit here. Any other file is a
:class:`WeightsEntry` that its model's family module passes to
:func:`register_weights`; for a file on a server, give ``url="https://..."``. Rules: never list a file that does not exist (a shipped
file must be in ``pretrained/`` with that hash, which ``verify_registry()`` and
the tests check; a URL entry only after ``larq-esbnn weights fetch MODEL TAG``
succeeded once); ``include_top=False`` marks a file saved without the
classification head.

External entries (``kind == "external"``): the authors' ImageNet checkpoints
sit behind links that need a browser (Google Drive, university file servers),
so they are registered with their official page, file name, container and
reported top-1, and no hash (none has been verified). ``weights="imagenet"`` on
such a model raises :class:`ExternalWeightsError`, which says where to download
the file and the one call that uses it. Each is one :func:`released` record
registered by the model's family module (``larq_esbnn/models/reactnet.py``,
``bcdnet.py``, ``bnext.py``), beside the rules that map its checkpoint's tensor
names (:func:`larq_esbnn.registry.register_torch_rules`).

PyTorch checkpoints: ``weights=`` also accepts a downloaded ``.pth``,
``.pth.tar`` or ``.pt`` file (a path or a URL). It is read with
``torch.load(weights_only=True)``, converted once by
:mod:`larq_esbnn.torch_import` into the model being built, and cached as
``<cache>/<model>-<sha256 of the checkpoint>.h5`` (written to a temporary file
and renamed, so a failure leaves no half file); later calls with the same file
load the cached ``.h5``. A file that is not a checkpoint of that model raises
:class:`WeightsError` naming the first missing or mismatched tensor.

Each entry also records how its inputs are prepared (:class:`Preprocessing`:
input size, resize / crop, mean and std, class names), which
:func:`larq_esbnn.predict` and ``larq-esbnn predict`` use.

Cache: ``cache_dir`` argument, else ``$LARQ_ESBNN_CACHE``, else
``~/.cache/larq_esbnn``. A download goes to a temporary file in the cache
directory, is checked for completeness (Content-Length) and sha256, and only
then renamed into place (``os.replace``); any failure leaves no file behind. A
cached file whose hash matches is used without touching the network.
"""

import hashlib
import http.client
import json
import os
import pathlib
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import lru_cache

from larq_esbnn import registry, torch_import, util
from larq_esbnn.errors import BadWeights
from larq_esbnn.util import CACHE_ENV, IMAGENET_MEAN, IMAGENET_STD, sha256_file  # noqa: F401 (public here too)

PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent / "pretrained"
_CHUNK = 1 << 16
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class WeightsError(BadWeights):
    """A weights file that cannot be resolved, downloaded, verified or loaded."""


class DownloadError(WeightsError):
    """A failed or unverifiable download (nothing was written to the cache)."""


class ExternalWeightsError(WeightsError):
    """Registered weights that must be downloaded by hand (the message says where and how)."""


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for one set of weights, and what the outputs mean.

    The model sees ``(pixel / 255 - mean) / std`` per RGB channel (``mean`` /
    ``std`` on the 0-1 scale). ``crop``: ``"resize"`` resizes the whole image to
    ``input_size`` x ``input_size`` (CIFAR-10, whose images already are 32 x 32);
    ``"center"`` resizes the shorter side to ``input_size / 0.875`` and takes the
    central square, the evaluation of the released ImageNet checkpoints
    (256 -> 224). ``classes``: class names in output order, or ``classes_file``:
    a ``label<TAB>name`` file in ``larq_esbnn/pretrained/``.
    """

    dataset: str
    input_size: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop: str = "resize"
    classes: tuple = ()
    classes_file: str = ""

    def class_names(self):
        """The class names in output order."""
        if self.classes:
            return list(self.classes)
        return [name for _, name in _read_classes(self.classes_file)]

    def class_labels(self):
        """A stable label per class: the ImageNet WordNet ID, else the class name."""
        if self.classes:
            return list(self.classes)
        return [label for label, _ in _read_classes(self.classes_file)]


@lru_cache(maxsize=4)
def _read_classes(filename):
    rows = []
    for line in (PRETRAINED_DIR / filename).read_text().splitlines():
        if line and not line.startswith("#"):
            label, _, name = line.partition("\t")
            rows.append((label, name))
    return tuple(rows)


# The CIFAR-10 weights trained here use the ImageNet mean / std (train.data.normalize).
CIFAR10 = Preprocessing("CIFAR-10", 32, classes=CIFAR10_CLASSES)
# Classes: sorted WordNet IDs (the torchvision ImageFolder order of the releases)
# with WordNet 3.0 names; see the header of pretrained/imagenet_classes.txt.
IMAGENET = Preprocessing("ImageNet-1k", 224, crop="center", classes_file="imagenet_classes.txt")
PREPROCESSING = {"cifar10": CIFAR10, "imagenet": IMAGENET}
# written next to a fine-tuned weights file: the Preprocessing of those weights (JSON)
PREPROCESSING_FILE = "preprocessing.json"


def preprocessing_beside(path):
    """The :class:`Preprocessing` recorded next to a weights file (fine-tuning runs), or None."""
    import json

    recorded = pathlib.Path(path).with_name(PREPROCESSING_FILE)
    if not recorded.is_file():
        return None
    fields = json.loads(recorded.read_text())
    return Preprocessing(**{**fields, "mean": tuple(fields["mean"]), "std": tuple(fields["std"]),
                            "classes": tuple(fields["classes"])})


@dataclass(frozen=True)
class WeightsEntry:
    """One registered weights file.

    model / tag: the model name (``larq_esbnn.models.names()``) and the weights tag.
    filename: name in the cache, or of the file shipped in ``larq_esbnn/pretrained/``.
    sha256: hex digest of the file. url: where to download it; None = shipped file.
    include_top: True if the file holds the classification head (it also loads
    into ``include_top=False`` models, which skip the head).
    source: "trained by this project (...)" or "converted from <named release>".
    metric: the reported metric, with dataset and split.
    """

    model: str
    tag: str
    filename: str
    sha256: str
    url: str = None
    include_top: bool = True
    source: str = ""
    metric: str = ""
    preprocessing: Preprocessing = None

    kind = "file"

    @property
    def shipped(self):
        return self.url is None

    @property
    def location(self):
        return self.url or f"larq_esbnn/pretrained/{self.filename}"


@dataclass(frozen=True)
class ExternalWeights:
    """Weights the authors publish behind a link that needs a browser.

    page: the official page that links the file. filename: the file to download,
    as the page or the release's code names it. container: what ``torch.load``
    returns for it. link: the direct link when the page gives one. note: what is
    and is not verified about this entry. No sha256 until one has been checked.
    """

    model: str
    tag: str
    page: str
    filename: str
    container: str
    paper: str
    preprocessing: Preprocessing = None
    link: str = ""
    note: str = ""

    kind = "external"
    sha256 = None
    url = None
    include_top = True
    shipped = False

    @property
    def metric(self):
        # the figure itself is registered once, with the model (``reported=`` in its family module)
        top1 = registry.entry(self.model).reported_top1
        return f"ImageNet top-1 {top1} % as reported by {self.paper}, not measured here"

    @property
    def source(self):
        return f"{self.paper} release (PyTorch), converted on first use"

    @property
    def location(self):
        return self.link or self.page

    def instructions(self, cache_dir=None):
        """The text of :class:`ExternalWeightsError`: where to download, and the one call."""
        where = f"{self.link} (linked from {self.page})" if self.link else self.page
        lines = [
            f"{self.model}: the {self.tag!r} weights ({self.metric}) cannot be downloaded by a "
            "program: the authors publish them behind a link that needs a browser.",
            f"  1. download {self.filename} from {where}",
        ]
        if self.model in torch_import.supported():
            lines += [
                "  2. use it in one call (converted once, then loaded from the cache "
                f"{util.cache_dir(cache_dir)}):",
                f'       larq_esbnn.models.{self.model}(weights="/path/to/{_example_name(self.filename)}")',
                f"     or: larq-esbnn predict {self.model} --weights /path/to/"
                f"{_example_name(self.filename)} IMAGE.jpg",
                "  (reading it needs torch: pip install 'larq-esbnn[torch]')",
            ]
        else:
            lines.append(f"  2. larq_esbnn.torch_import has no conversion for {self.model} yet")
        if "not verified" in self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


def _example_name(filename):
    return filename if filename.lower().endswith(TORCH_SUFFIXES) else "checkpoint.pth.tar"


# How far a registered accuracy may move on another machine. Binary networks turn
# float rounding into flipped signs: a pre-sign value within ~1e-6 of zero can
# binarise differently under other kernels (instruction set, thread count), which
# can flip a prediction. Seen: the shipped resnet20 gave 4,627 / 10,000 where it
# was trained and 4,629 on a second x86 machine; g_resnet20 gave 4,802
# and 4,807 (5 images). Checks allow 0.1 points (10 of 10,000 test images), twice
# the largest shift seen; compare counts with ``within_top1_tolerance``.
TOP1_TOLERANCE = 0.001


def within_top1_tolerance(top1, registered, n=10000):
    """True if ``top1`` is within TOP1_TOLERANCE of ``registered``, compared as whole
    images out of ``n`` (no float rounding at the boundary)."""
    return abs(round(top1 * n) - round(registered * n)) <= round(TOP1_TOLERANCE * n)


def registered_top1(model, tag):
    """The top-1 (a fraction) written in the metric of a registered entry."""
    metric = lookup(model, tag).metric
    found = re.search(r"top-1 ([\d.]+) %", metric)
    if not found:
        raise WeightsError(f"{model}.{tag}: the metric {metric!r} states no top-1")
    return float(found.group(1)) / 100


def _trained_here(model, sha256, top1, recipe="resnet20_cifar10.toml"):
    """A CIFAR-10 file trained by ``training/<recipe>`` and shipped in the package."""
    return WeightsEntry(model, "cifar10", f"{model}_cifar10.h5", sha256,
                        source=f"trained by this project (training/{recipe})",
                        metric=f"CIFAR-10 test top-1 {top1} % (10,000 images)",
                        preprocessing=CIFAR10)


def released(model, page, filename, paper, container, link="", note=""):
    """An ImageNet checkpoint of the authors' release, to be downloaded by hand
    (registered by the model's family module, see :func:`register_weights`)."""
    return ExternalWeights(model, "imagenet", page, filename, container, paper,
                           preprocessing=IMAGENET, link=link, note=note)


# The CIFAR-10 weights trained here: one record each in pretrained/trained_here.json
# (model, sha256, top-1, recipe), which ``--ship`` of zoo/collect_cifar10.py and
# zoo/continue_cifar10.py rewrites; see the module docstring.
TRAINED_HERE = PRETRAINED_DIR / "trained_here.json"
_ENTRIES = [_trained_here(r["model"], r["sha256"], r["top1"], r["recipe"])
            for r in json.loads(TRAINED_HERE.read_text())]


def _build_registry(entries):
    registry = {}
    for e in entries:
        if e.kind != "external" and not _HEX64.match(e.sha256 or ""):
            raise ValueError(f"weights entry {e.model}.{e.tag}: sha256 must be 64 lowercase hex digits, got {e.sha256!r}")
        if (e.model, e.tag) in registry:
            raise ValueError(f"weights entry {e.model}.{e.tag} is registered twice")
        registry[(e.model, e.tag)] = e
    return registry


_REGISTRY = _build_registry(_ENTRIES)


def register_weights(*entries):
    """Add weights records to the registry. Each family module under
    :mod:`larq_esbnn.models` registers the records of its models beside their
    factories (the authors' checkpoints, :func:`released`)."""
    for key, e in _build_registry(entries).items():
        if key in _REGISTRY:
            raise ValueError(f"weights entry {e.model}.{e.tag} is registered twice")
        _REGISTRY[key] = e


def registered(name=None):
    """Registered :class:`WeightsEntry` objects (of model ``name``, or all), sorted."""
    return sorted(
        (e for e in _REGISTRY.values() if name is None or e.model == name),
        key=lambda e: (e.model, e.tag),
    )


def tags(name):
    """The registered weights tags of model ``name``."""
    return [e.tag for e in registered(name)]


def lookup(name, tag):
    """The weights registered as ``name`` / ``tag`` (a :class:`WeightsEntry` or
    :class:`ExternalWeights`); unknown tags raise, listing the known ones. (The
    model itself is ``larq_esbnn.models.entry(name)``, a ``ModelEntry``.)"""
    e = _REGISTRY.get((name, tag))
    if e is None:
        known = tags(name)
        listed = ", ".join(repr(t) for t in known) if known else "none registered"
        raise WeightsError(
            f"unknown weights tag {tag!r} for model {name!r}; available tags: {listed}. "
            "weights= also accepts a local .h5 path, a PyTorch checkpoint (.pth, .pth.tar, .pt) "
            "or an http(s):// / file:// URL"
        )
    return e


def verify_registry(entries=None):
    """Check that every shipped file exists with its sha256 (URL entries are not fetched).

    Returns the number of checked files; raises :class:`WeightsError` on the first problem.
    """
    checked = 0
    for e in entries if entries is not None else registered():
        if not e.shipped:
            continue
        _shipped_path(e)
        checked += 1
    return checked


def _shipped_path(e):
    path = PRETRAINED_DIR / e.filename
    if not path.is_file():
        raise WeightsError(f"weights {e.model}.{e.tag}: shipped file {path} does not exist")
    actual = sha256_file(path)
    if actual != e.sha256:
        raise WeightsError(
            f"weights {e.model}.{e.tag}: shipped file {path} has sha256 {actual}, "
            f"expected {e.sha256}"
        )
    return path


def _check_sha(sha256):
    if sha256 is None:
        return None
    sha = str(sha256).lower()
    if not _HEX64.match(sha):
        raise ValueError(f"sha256 must be 64 hex digits or None, got {sha256!r}")
    return sha


def _split_fragment(url):
    """``url#sha256=HEX`` -> (url without fragment, HEX or None)."""
    base, _, fragment = url.partition("#")
    if not fragment:
        return url, None
    key, _, value = fragment.partition("=")
    if key != "sha256":
        raise ValueError(f"unsupported URL fragment {fragment!r} in {url}; only #sha256=<hex> is allowed")
    return base, _check_sha(value)


def fetch(url, sha256, cache_dir=None, filename=None, progress=True, timeout=60):
    """Download ``url`` into the cache, verified, and return the local path.

    sha256: expected hex digest; ``None`` downloads without verification (the
    transfer is still checked for completeness). A cached file with the right
    hash is returned without any network access; one with a wrong hash is
    replaced. On an HTTP / network error, a truncated transfer or a hash
    mismatch, :class:`DownloadError` names the URL and the expected and actual
    hash, and no file is left in the cache.
    """
    sha256 = _check_sha(sha256)
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise ValueError(f"fetch needs an http://, https:// or file:// URL, got {url!r}")
    directory = util.cache_dir(cache_dir)
    if filename is None:
        filename = pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    if os.sep in filename or "/" in filename or filename in (".", ".."):
        raise ValueError(f"filename must be a plain file name, got {filename!r}")
    target = directory / filename
    if target.is_file():
        if sha256 is None or sha256_file(target) == sha256:
            return target
        print(f"larq-esbnn: cached {target} does not match sha256 {sha256}; downloading again",
              file=sys.stderr)
    directory.mkdir(parents=True, exist_ok=True)
    expected = sha256 or "none given"
    with util.atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            actual, received, length = _download(url, out, filename, progress, timeout, expected)
        if length is not None and received < length:
            raise DownloadError(
                f"download of {url} truncated: received {received} of {length} bytes; "
                f"expected sha256 {expected}, actual sha256 {actual} (partial data); "
                f"nothing was written to {directory}"
            )
        if sha256 is not None and actual != sha256:
            raise DownloadError(
                f"sha256 mismatch for {url}: expected {sha256}, actual {actual}; "
                f"nothing was written to {directory}"
            )
    return target


def _download(url, out, filename, progress, timeout, expected):
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            header = response.headers.get("Content-Length")
            length = int(header) if header and header.isdigit() else None
            with tqdm(total=length, unit="B", unit_scale=True, desc=filename,
                      disable=not progress, file=sys.stderr) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except http.client.IncompleteRead as err:
                        chunk = err.partial
                        digest.update(chunk)
                        out.write(chunk)
                        received += len(chunk)
                        break
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise DownloadError(
            f"download of {url} failed: HTTP {err.code} {err.reason}; expected sha256 "
            f"{expected}, actual: nothing received; nothing was written to the cache"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        actual = digest.hexdigest() if received else "nothing received"
        raise DownloadError(
            f"download of {url} failed after {received} bytes: {err}; expected sha256 "
            f"{expected}, actual {actual}; nothing was written to the cache"
        ) from None
    return digest.hexdigest(), received, length


def resolve(name, weights, cache_dir=None, progress=True):
    """Turn a ``weights=`` value into (local path, WeightsEntry or None)."""
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str) or not weights:
        raise WeightsError(
            f"weights must be None, a registered tag, a path or a URL, got {weights!r}"
        )
    scheme = urllib.parse.urlparse(weights).scheme
    if scheme in ("http", "https"):
        url, sha = _split_fragment(weights)
        filename = pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name or "weights.h5"
        if sha is None:  # unverifiable: keep different URLs apart in the cache
            filename = hashlib.sha256(url.encode()).hexdigest()[:12] + "-" + filename
        return fetch(url, sha, cache_dir, filename, progress), None
    if scheme == "file":
        url, sha = _split_fragment(weights)
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise WeightsError(f"file:// URL with a remote host is not supported: {weights}")
        path = pathlib.Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path} (from {weights})")
        if sha is not None and sha256_file(path) != sha:
            raise WeightsError(
                f"sha256 mismatch for {weights}: expected {sha}, actual {sha256_file(path)}"
            )
        return path, None
    if (name, weights) in _REGISTRY:
        e = _REGISTRY[(name, weights)]
        if e.kind == "external":
            raise ExternalWeightsError(e.instructions(cache_dir))
        if e.shipped:
            return _shipped_path(e), e
        return fetch(e.url, e.sha256, cache_dir, e.filename, progress), e
    path = pathlib.Path(weights).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir():
        raise WeightsError(f"weights {weights!r} is a directory; give a weights file (.h5 or a PyTorch "
                           f"checkpoint) in it, a URL or a registered tag of {name!r}")
    if os.sep not in weights and "/" not in weights and "." not in weights:
        lookup(name, weights)  # raises, listing the tags
    raise WeightsError(f"weights file not found: {weights!r} (not a registered tag of {name!r} either)")


def read_h5(path):
    """Layer name -> list of (weight name, shape) of a Keras HDF5 weights file, in file order."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise WeightsError(
            f"{path} is not a readable HDF5 weights file ({err}); expected a file written "
            "by model.save_weights('*.h5') or larq-esbnn import-torch"
        ) from None
    try:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise WeightsError(
                f"{path} is HDF5 but holds no Keras layer weights (no 'layer_names' "
                "attribute); expected a file written by model.save_weights('*.h5')"
            )
        layers = {}
        for raw in group.attrs["layer_names"]:
            lname = raw.decode() if isinstance(raw, bytes) else str(raw)
            g = group[lname]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["weight_names"]]
            layers[lname] = [(n, tuple(g[n].shape)) for n in names]
        return layers
    except (KeyError, OSError, RuntimeError) as err:
        raise WeightsError(f"{path}: corrupt Keras HDF5 weights file ({err})") from None
    finally:
        f.close()


def _model_weights(layer):
    # the order Keras uses in HDF5 files: trainable, then non-trainable
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _fmt(shapes):
    return "[" + ", ".join(str(tuple(s)) for s in shapes) + "]"


def check_compatible(model, path, file_layers=None):
    """Check that ``path`` fits ``model``; return the file layers that are skipped.

    Every model layer with weights must be in the file with the same number of
    weights and the same shapes; the first one that is not raises, naming the
    layer and both shape lists. File layers absent from the model are allowed
    only when they are the classification head (``head_*``) and the model has
    none (``include_top=False``).
    """
    if file_layers is None:
        file_layers = read_h5(path)
    model_layers = [layer for layer in model.layers if layer.weights]
    for layer in model_layers:
        want = [tuple(w.shape) for w in _model_weights(layer)]
        if layer.name not in file_layers:
            hint = ""
            if layer.name.startswith("head_") and not any(n.startswith("head_") for n in file_layers):
                hint = " (the file has no classification head: build the model with include_top=False)"
            raise WeightsError(
                f"weights do not fit model {model.name!r}: layer {layer.name!r} with shapes "
                f"{_fmt(want)} is not in {path}{hint}"
            )
        have = [s for _, s in file_layers[layer.name]]
        if have != want:
            raise WeightsError(
                f"weights do not fit model {model.name!r}: first mismatching layer "
                f"{layer.name!r}: model shapes {_fmt(want)}, file {path} shapes {_fmt(have)}"
            )
    names = {layer.name for layer in model_layers}
    extra = [n for n, ws in file_layers.items() if ws and n not in names]
    model_has_head = any(n.startswith("head_") for n in names)
    unexpected = [n for n in extra if model_has_head or not n.startswith("head_")]
    if unexpected:
        raise WeightsError(
            f"weights do not fit model {model.name!r}: {path} has weights for layers the "
            f"model lacks: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
        )
    return extra


def load_h5(model, path):
    """Check ``path`` against ``model`` and assign every weight; return skipped file layers."""
    import h5py
    import tensorflow as tf

    file_layers = read_h5(path)
    skipped = check_compatible(model, path, file_layers)
    pairs = []
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            for layer in model.layers:
                if not layer.weights:
                    continue
                g = group[layer.name]
                for var, (wname, _) in zip(_model_weights(layer), file_layers[layer.name]):
                    pairs.append((var, g[wname][()]))
    except (KeyError, OSError, RuntimeError) as err:
        raise WeightsError(f"{path}: corrupt Keras HDF5 weights file ({err})") from None
    tf.keras.backend.batch_set_value(pairs)
    return skipped


def load_weights(model, name, weights, cache_dir=None, progress=True):
    """Load ``weights`` (a tag of ``name``, a path or a URL) into ``model``.

    Returns the local path that was loaded. A registered file saved without
    the head (``include_top=False``) does not load into a model with a head.
    A PyTorch checkpoint (``.pth``, ``.pth.tar``, ``.pt``) is converted once and
    loaded from the cache (:func:`converted_checkpoint`); the cached ``.h5`` is returned.
    """
    path, e = resolve(name, weights, cache_dir, progress)
    if is_torch_checkpoint(path):
        path = converted_checkpoint(model, name, path, cache_dir)
    load_h5(model, path)
    return path


def is_torch_checkpoint(path):
    """True for the file names of PyTorch checkpoints: ``.pth``, ``.pth.tar``, ``.pt``."""
    return str(path).lower().endswith(TORCH_SUFFIXES)


def converted_checkpoint(model, name, checkpoint, cache_dir=None):
    """The cached Keras ``.h5`` of PyTorch ``checkpoint`` for model ``name``, converted if needed.

    The cache key is the checkpoint's sha256: ``<cache>/<name>-<sha256>.h5``,
    with the importer's report beside it (``.json``: unused tensors, latent
    binary weights that are exactly 0). The conversion fills ``model`` itself
    (or, for a model built without the head, a twin with the checkpoint's head,
    so that the cached file serves both); the file is written to a temporary
    name and renamed, so a failed conversion leaves nothing in the cache. A
    checkpoint that does not fit raises :class:`WeightsError` naming the first
    missing or mismatched tensor.
    """
    checkpoint = pathlib.Path(checkpoint)
    sha = sha256_file(checkpoint)
    directory = util.cache_dir(cache_dir)
    target = directory / f"{name}-{sha}.h5"
    if target.is_file():
        return target
    if name not in torch_import.supported():
        raise WeightsError(
            f"{checkpoint}: PyTorch checkpoints can be converted for "
            f"{', '.join(torch_import.supported())}, not for {name!r}"
        )
    try:
        state = torch_import.load_state_dict(str(checkpoint))
        into = model
        if not any(layer.name == "head_fc" for layer in model.layers):
            twin = torch_import.release_kwargs(name, state, {"input_shape": model.input_shape[1:]})
            into = registry.get(name, **twin)
        report = torch_import.import_state_dict(into, name, state)
    except torch_import.CheckpointError as err:
        raise WeightsError(f"{checkpoint} is not a {name} checkpoint: {err}") from None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()  # writable? (the file is gone at once)
    except OSError as err:  # the cache only saves converting again: convert into a temporary folder
        print(f"larq-esbnn: warning: cannot write to the cache {directory} ({err.strerror}); set "
              f"{CACHE_ENV} to a writable directory to keep converted checkpoints", file=sys.stderr)
        directory = pathlib.Path(tempfile.mkdtemp(prefix="larq_esbnn-"))
        target = directory / target.name
    with util.atomic_path(target, suffix=".part.h5") as tmp:
        into.save_weights(tmp)
    info = {"checkpoint": str(checkpoint), "sha256": sha, "model": name, **report.as_dict()}
    util.atomic_write_text(target.with_suffix(".json"), json.dumps(info, indent=2))
    print(f"larq-esbnn: converted {checkpoint} -> {target}", file=sys.stderr)
    return target


# ---------------------------------------------------------------------- CLI


def add_commands(subparsers):
    p = subparsers.add_parser(
        "weights",
        help="list registered pretrained weights, or fetch one",
        description="`larq-esbnn weights [MODEL]` lists the registry; "
        "`larq-esbnn weights fetch MODEL TAG` downloads (or verifies) one file into the cache.",
    )
    p.add_argument("args", nargs="*", metavar="MODEL | fetch MODEL TAG")
    p.add_argument("--cache-dir", default=None, help=f"cache directory (default ${CACHE_ENV} or ~/.cache/larq_esbnn)")
    p.set_defaults(func=_cli_weights)


def _cli_weights(args):
    rest = list(args.args)
    if rest and rest[0] == "fetch":
        if len(rest) != 3:
            raise ValueError(f"usage: larq-esbnn weights fetch MODEL TAG (got {' '.join(rest[1:]) or 'nothing'})")
        registry.entry(rest[1])
        e = lookup(rest[1], rest[2])
        if e.kind == "external":
            raise ExternalWeightsError(e.instructions(args.cache_dir))
        path = _shipped_path(e) if e.shipped else fetch(e.url, e.sha256, args.cache_dir, e.filename)
        print(path)
        return 0
    if len(rest) > 1:
        raise ValueError(f"usage: larq-esbnn weights [MODEL] | weights fetch MODEL TAG (got {' '.join(rest)})")
    name = rest[0] if rest else None
    if name is not None:
        registry.entry(name)  # unknown model -> error listing the models
    entries = registered(name)
    if not entries:
        which = f"model {name!r}" if name else "any model"
        print(f"no pretrained weights are registered for {which}. Any .h5 file written by "
              "model.save_weights or `larq-esbnn import-torch` loads with weights=PATH.")
        return 0
    rows = [("model", "tag", "kind", "top", "metric", "source", "location", "sha256")]
    rows += [(e.model, e.tag, e.kind, "yes" if e.include_top else "no", e.metric, e.source,
              e.location, (e.sha256 or "-")[:12]) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
