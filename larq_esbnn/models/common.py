"""Input checks and model finishing shared by every factory (keras.applications style)."""

import dataclasses

import tensorflow as tf

from larq_esbnn import blocks
from larq_esbnn.weights import load_weights

_BLOCK_OPTIONS = frozenset(f.name for f in dataclasses.fields(blocks.BlockConfig))


def model_input(name, input_shape, input_tensor, default_size, multiple, min_size):
    """Validate ``input_shape`` / ``input_tensor`` and return (Input tensor, model inputs)."""
    if input_tensor is not None:
        if not tf.keras.backend.is_keras_tensor(input_tensor):
            raise ValueError(f"{name}: input_tensor must be a Keras tensor, got {type(input_tensor).__name__}")
        shape = tuple(input_tensor.shape[1:])
        if input_shape is not None and tuple(input_shape) != shape:
            raise ValueError(f"{name}: input_shape {tuple(input_shape)} does not match input_tensor {shape}")
    else:
        shape = tuple(input_shape) if input_shape is not None else (default_size, default_size, 3)
    if len(shape) != 3:
        raise ValueError(f"{name}: input_shape must be (height, width, channels), got {shape}")
    h, w, c = shape
    for label, size in (("height", h), ("width", w)):
        if size is None or size < min_size or size % multiple:
            raise ValueError(
                f"{name}: input {label} {size} is not allowed; use a static size that is a "
                f"multiple of {multiple} and at least {min_size} (default {default_size})"
            )
    if c is None or c < 1:
        raise ValueError(f"{name}: input channels must be >= 1, got {c}")
    if input_tensor is not None:
        return input_tensor, tf.keras.utils.get_source_inputs(input_tensor)
    x = tf.keras.Input(shape=shape, name="input")
    return x, x


def check_num_classes(name, num_classes):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be an integer >= 1, got {num_classes!r}")


def finish(inputs, outputs, name, weights):
    """Make the model and load ``weights`` (None, a registered tag, a path or a URL)."""
    model = tf.keras.Model(inputs, outputs, name=name)
    if weights is not None:
        load_weights(model, name, weights)
    return model


def block_config(args):
    """The :class:`larq_esbnn.blocks.BlockConfig` of a factory's arguments ``args``.

    Each factory takes the block options it supports (``tau``, ``groups``,
    ``pad_value``, ``bn_momentum`` ...) under the field names of BlockConfig, so
    they are picked by name here instead of being copied one by one in every
    factory; an option a factory does not take keeps its default (no ``groups``
    in BNext: 1).
    """
    return blocks.BlockConfig(**{k: v for k, v in args.items() if k in _BLOCK_OPTIONS})


def build(args, features, default_size=224, multiple=32, min_size=32, cfg=None):
    """The frame every convolutional factory shares, around its ``features(x, cfg)``.

    ``args`` are the factory's own arguments: ``locals()`` taken as its first
    statement, before it binds any other name. In order: check ``num_classes``,
    make the block options (``cfg``, else :func:`block_config`), validate the
    input (``default_size``, sides a ``multiple`` of and at least ``min_size``),
    run ``features``, add the classifier when ``include_top`` (``heads`` and
    ``head_channels`` where the factory has them, else one head on all
    channels) and load ``weights``. Layers are created in that order, so every
    model keeps the layer names its weights files are stored under.
    """
    name = args["name"]
    check_num_classes(name, args["num_classes"])
    cfg = cfg or block_config(args)
    x, inputs = model_input(name, args["input_shape"], args["input_tensor"], default_size, multiple, min_size)
    x = features(x, cfg)
    if args["include_top"]:
        x = blocks.classifier(x, args["num_classes"], cfg, args.get("heads", 1),
                              args.get("head_channels", "all"), args["classifier_activation"])
    return finish(inputs, x, name, args["weights"])


def transfer_weights(source, target):
    """Copy every weight of ``source`` into the same-named layer of ``target``.

    Used to start BCDNet-B from BCDNet-A and step 2 from step 1. Raises
    ValueError naming the first layer whose shapes differ; returns the names of
    target layers with weights that ``source`` did not have.
    """
    by_name = {layer.name: layer for layer in source.layers if layer.weights}
    untouched = []
    for layer in target.layers:
        if not layer.weights:
            continue
        src = by_name.get(layer.name)
        if src is None:
            untouched.append(layer.name)
            continue
        values = src.get_weights()
        shapes = [w.shape for w in layer.get_weights()]
        if [v.shape for v in values] != shapes:
            raise ValueError(
                f"layer {layer.name!r}: source weight shapes {[v.shape for v in values]} "
                f"do not match target shapes {shapes}"
            )
        layer.set_weights(values)
    return untouched


def walk_layers(model):
    """Every layer of ``model``, descending into nested models (depth first)."""
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            yield from walk_layers(layer)
        else:
            yield layer
