"""Classify image files with a model and its weights: ``larq_esbnn.predict`` and ``larq-esbnn predict``.

    larq_esbnn.predict("es_g_resnet20", "cifar10", ["cat.jpg"])
    larq-esbnn predict es_g_resnet20 --weights cifar10 cat.jpg
    larq-esbnn predict reactnet_a --weights checkpoint.pth.tar photo.jpg

The preprocessing is the one recorded with the weights in the registry
(:class:`larq_esbnn.weights.Preprocessing`: input size, resize or resize +
centre crop, mean / std, class names). For weights given as a file, it is
that of the model's registered weights (CIFAR-10 for the ResNet-20 family,
ImageNet for the models with a released ImageNet checkpoint), or the one named
by ``dataset=`` / ``--dataset``. Weights written by a fine-tuning run
(``larq-esbnn finetune ... --output RUN``) carry their own: ``RUN/preprocessing.json``
(data set, input size, crop, class names) and ``RUN/recipe.json`` (model and its
arguments) beside ``RUN/weights.h5``, so the run's class names are printed.

The output follows ``keras.applications.*.decode_predictions``: per image, the
``top`` classes with their softmax probabilities, most likely first. ImageNet
classes are named by the first WordNet lemma of their synset (``tench``,
``great_white_shark``) and labelled by their WordNet ID (``n01440764``).
"""

import json
import os
import pathlib
import sys
from collections import namedtuple

import numpy as np

from larq_esbnn import models
from larq_esbnn import weights as weights_lib
from larq_esbnn.errors import BadArgument, BadData
from larq_esbnn.util import decode_image

Prediction = namedtuple("Prediction", ["index", "label", "name", "probability"])


def preprocessing_for(model_name, weights=None, dataset=None):
    """The :class:`~larq_esbnn.weights.Preprocessing` for ``weights`` of ``model_name``.

    ``dataset`` (``"cifar10"`` or ``"imagenet"``) wins; then the registered
    entry of a tag; then, for a file, the data set of the model's registered
    weights (a PyTorch checkpoint means ImageNet).
    """
    if dataset is not None:
        if dataset not in weights_lib.PREPROCESSING:
            raise ValueError(f"dataset must be one of {sorted(weights_lib.PREPROCESSING)}, got {dataset!r}")
        return weights_lib.PREPROCESSING[dataset]
    registered = {e.tag: e for e in weights_lib.registered(model_name)}
    if isinstance(weights, str) and weights in registered and registered[weights].preprocessing:
        return registered[weights].preprocessing
    if isinstance(weights, (str, pathlib.Path)) and os.path.isfile(weights):
        recorded = weights_lib.preprocessing_beside(weights)
        if recorded is not None:  # written by a fine-tuning run
            return recorded
    if weights is not None and weights_lib.is_torch_checkpoint(weights):
        return weights_lib.IMAGENET
    known = {e.preprocessing for e in registered.values() if e.preprocessing is not None}
    if len(known) == 1:
        return known.pop()
    raise ValueError(
        f"cannot tell which data set the weights {weights!r} of {model_name!r} were trained on; "
        f"pass dataset= (--dataset) as one of {sorted(weights_lib.PREPROCESSING)}"
    )


def run_record(weights):
    """What a fine-tuning run recorded beside ``weights`` (``DIR/weights.h5``):
    ``{"model_args": ..., "input_size": ...}`` from its ``recipe.json`` and
    ``preprocessing.json``; empty values for any other weights."""
    out = {"model_args": {}, "input_size": 0, "model": None}
    if not isinstance(weights, (str, pathlib.Path)) or not os.path.isfile(weights):
        return out
    prep = weights_lib.preprocessing_beside(weights)
    if prep is not None:
        out["input_size"] = prep.input_size
        recipe = pathlib.Path(weights).with_name("recipe.json")
        try:
            recorded = json.loads(recipe.read_text())
            out["model_args"] = dict(recorded.get("model_args") or {})
            out["model"] = recorded.get("model")
        except (OSError, ValueError, AttributeError):
            pass  # weights without their run's recipe: the model's default arguments
    return out


def check_run_model(model_name, weights):
    """A :class:`BadArgument` when ``weights`` come from a fine-tuning run of another model."""
    recorded = run_record(weights)["model"]
    if recorded and recorded != model_name.split(".", 1)[0]:
        raise BadArgument(f"{weights} are weights of {recorded} (its run's recipe.json), not {model_name}; "
                          f"give MODEL {recorded}")


def load_image(path, prep):
    """One image file -> float32 array (size, size, 3), prepared as ``prep`` says."""
    import tensorflow as tf

    try:
        raw = tf.io.read_file(str(path))
        image = decode_image(raw)
    except tf.errors.OpError as err:  # missing file, a folder, not an image
        raise BadData(f"cannot read image {path}: {err.message.splitlines()[0]}") from None
    image = tf.cast(image, tf.float32)
    size = prep.input_size
    if prep.crop == "center":
        h, w = int(image.shape[0]), int(image.shape[1])
        scale = (size / 0.875) / min(h, w)
        image = tf.image.resize(image, [round(h * scale), round(w * scale)])  # as train.data._center
        image = tf.image.resize_with_crop_or_pad(image, size, size)
    elif prep.crop == "resize":
        if tuple(image.shape[:2]) != (size, size):
            image = tf.image.resize(image, [size, size])
    else:
        raise ValueError(f"unknown crop {prep.crop!r}; expected 'center' or 'resize'")
    mean = np.asarray(prep.mean, np.float32) * 255.0
    std = np.asarray(prep.std, np.float32) * 255.0
    return ((image - mean) / std).numpy()


def decode_predictions(probabilities, prep, top=5):
    """Per row of ``probabilities``: the ``top`` :class:`Prediction` tuples, most likely first."""
    names, labels = prep.class_names(), prep.class_labels()
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(names):
        raise ValueError(
            f"expected probabilities of shape (images, {len(names)}) for {prep.dataset}, "
            f"got {probabilities.shape}"
        )
    out = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")[:top]
        out.append([Prediction(int(i), labels[i], names[i], float(row[i])) for i in order])
    return out


def predict(model_name, weights, images, top=5, dataset=None, model=None, **model_args):
    """Classify image files: per image, the ``top`` classes as :class:`Prediction`
    ``(index, label, name, probability)``, most likely first.

    model_name: a registered model. weights: a registered tag, an ``.h5`` file,
    a PyTorch checkpoint or a URL (see :mod:`larq_esbnn.weights`). images: paths.
    dataset: ``"cifar10"`` / ``"imagenet"`` to override the preprocessing.
    model: an already built model to reuse (built by this function otherwise).
    """
    import tensorflow as tf

    if isinstance(images, (str, pathlib.Path)):
        images = [images]
    if not images:
        raise ValueError("predict needs at least one image path")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    prep = preprocessing_for(model_name, weights, dataset)
    if model is None:
        check_run_model(model_name, weights)
        model_args = {**run_record(weights)["model_args"], **model_args}
        model = models.get(model_name, weights=weights, num_classes=len(prep.class_names()),
                           input_shape=(prep.input_size, prep.input_size, 3), **model_args)
    batch = np.stack([load_image(p, prep) for p in images])
    logits = model(batch, training=False)
    return decode_predictions(tf.nn.softmax(logits, axis=-1).numpy(), prep, min(top, logits.shape[-1]))


# ---------------------------------------------------------------------- CLI


def add_commands(subparsers):
    p = subparsers.add_parser(
        "predict",
        help="top-5 classes of image files, with the weights' own preprocessing",
        description="Classify IMAGE files with MODEL and weights W (a registered tag, an .h5 file, "
        "a PyTorch checkpoint .pth/.pth.tar/.pt or a URL), prepared as the weights' data set was "
        "(input size, crop, mean/std); prints the top classes with softmax probabilities.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--weights", required=True, metavar="W", help="tag, .h5 file, PyTorch checkpoint or URL")
    p.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--dataset", choices=sorted(weights_lib.PREPROCESSING), default=None,
                   help="preprocessing and class names (default: those of the weights)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=_cli_predict)


def _cli_predict(args):
    models.entry(args.model)  # unknown model -> error listing the models
    check_run_model(args.model, args.weights)
    prep = preprocessing_for(args.model, args.weights, args.dataset)
    model = models.get(args.model, weights=args.weights, num_classes=len(prep.class_names()),
                       input_shape=(prep.input_size, prep.input_size, 3), **run_record(args.weights)["model_args"])
    if not args.json:
        print(f"{args.model}, weights {args.weights}: {prep.dataset} preprocessing "
              f"({prep.input_size}x{prep.input_size}, {prep.crop}, mean {_fmt(prep.mean)}, "
              f"std {_fmt(prep.std)})")
    failed = []
    for path in args.images:  # one unreadable image does not hide the others' results
        try:
            (preds,) = predict(args.model, args.weights, [path], top=args.top, dataset=args.dataset, model=model)
        except BadData as err:
            failed.append(str(err))
            continue
        if args.json:
            print(json.dumps({"image": str(path), "top": [p._asdict() for p in preds]}))
            continue
        print(path)
        width = max(len(_label(p)) for p in preds)
        for rank, p in enumerate(preds, 1):
            print(f"  {rank}. {_label(p).ljust(width)}  {p.probability:.4f}")
    sys.stdout.flush()
    if failed:
        print("\n".join(f"larq-esbnn predict: error: {m}" for m in failed), file=sys.stderr)
        return 2
    return 0


def _label(p):
    return p.name if p.label == p.name else f"{p.name} ({p.label})"


def _fmt(values):
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


__all__ = ["Prediction", "decode_predictions", "load_image", "predict", "preprocessing_for", "run_record"]
