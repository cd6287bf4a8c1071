"""One registry of model names (timm style): ``name`` or ``name.tag`` (tag = weights).

Each entry holds the factory, its default arguments and a one-line description;
weight files and their sha256 live in :mod:`larq_esbnn.weights`. A family whose
authors released PyTorch checkpoints also registers here how those name their
tensors (:func:`register_torch_rules`), which drives :mod:`larq_esbnn.torch_import`.

This module imports nothing from the package but its error types. The families
in :mod:`larq_esbnn.models` register into it, and the modules they themselves
rely on (:mod:`larq_esbnn.weights`, :mod:`larq_esbnn.torch_import`) build a
model, or find its checkpoint rules, by name through it, so that none of them
has to import the families. Whoever looks a name up must therefore have
imported :mod:`larq_esbnn.models` first (the command line does so before it
runs a command).
"""

import difflib
import fnmatch
import functools
import inspect
from dataclasses import dataclass, field

from larq_esbnn.errors import BadArgument

_MODELS = {}
_TORCH_RULES = {}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: object
    description: str
    defaults: dict = field(default_factory=dict)
    input_size: int = 224
    binary: bool = True  # False for real-valued models (teachers): no binary convs to export
    reported_top1: str = ""  # ImageNet top-1 (%) as its paper or release reports it, not measured here
    reported_by: str = ""  # who reports it: "ReActNet", "ES-BNN release", ...
    task: str = "classification"  # or "detection" (larq_esbnn.detection)

    def build(self, **kwargs):
        self.check_args(kwargs)
        return self.factory(**{**self.defaults, **kwargs, "name": self.name})

    def resolved_args(self, kwargs):
        """Every argument the factory would see for ``build(**kwargs)``: its signature's
        defaults, then this entry's, then ``kwargs`` (so a rule reading the model's
        arguments need not repeat the factory's defaults)."""
        params = inspect.signature(self.factory).parameters.values()
        signature = {p.name: p.default for p in params if p.default is not p.empty}
        return {**signature, **self.defaults, **kwargs, "name": self.name}

    def arg_names(self):
        """The keyword arguments the factory takes (None: any)."""
        params = inspect.signature(self.factory).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return sorted(p.name for p in params if p.name != "name")

    def check_args(self, kwargs):
        """:class:`BadArgument` for arguments the model does not take or cannot honour."""
        allowed = self.arg_names()
        unknown = sorted(set(kwargs) - set(allowed)) if allowed is not None else []
        if unknown:
            raise BadArgument(f"{self.name} has no argument {', '.join(unknown)}; its arguments: "
                              f"{', '.join(allowed)}")
        momentum = kwargs.get("bn_momentum")
        if momentum is not None and not 0 <= momentum <= 1:
            raise BadArgument(f"bn_momentum must be in [0, 1], got {momentum}")
        if kwargs.get("include_top", True) is False:
            ignored = [k for k in ("num_classes", "classifier_activation") if kwargs.get(k) is not None]
            if ignored:
                raise BadArgument(f"{', '.join(ignored)} describe the head, which include_top=False "
                                  "leaves out; drop them or keep the head")


def _entry(name, factory, description, defaults, input_size, binary=True, reported=None, task="classification"):
    top1, by = reported or ("", "")
    if "{top1}" in description and not top1:
        raise ValueError(f"{name}: the description cites a reported top-1 but none is given")
    return ModelEntry(name, factory, description.replace("{top1}", top1), dict(defaults), input_size,
                      binary, top1, by, task)


def register_model(name, description, input_size=224, binary=True, reported=None, task="classification",
                   **defaults):
    """Decorator: register ``fn`` under ``name`` (with ``defaults`` applied).
    ``binary=False`` marks a real-valued model, such as a distillation teacher.
    ``reported=(top1, by)``: the ImageNet top-1 (%) that paper or release ``by``
    reports; ``{top1}`` in ``description`` is replaced by it."""

    def deco(fn):
        _MODELS[name] = _entry(name, fn, description, defaults, input_size, binary, reported, task)
        return fn

    return deco


def register_variant(name, base, description, input_size=224, reported=None, task="classification", **defaults):
    """Register ``base`` with other defaults (``es_reactnet_a`` = ``reactnet_a(tau=2)``)
    and return a public keyword-only factory for it (``reported`` as in :func:`register_model`)."""

    @functools.wraps(base)
    def factory(**kwargs):
        return base(**{**defaults, "name": name, **kwargs})

    factory.__name__ = factory.__qualname__ = name
    args = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
    _MODELS[name] = _entry(name, base, description, defaults, input_size, reported=reported, task=task)
    factory.__doc__ = (f"{_MODELS[name].description}\n\n``{base.__name__}({args})``; "
                       f"see :func:`{base.__module__}.{base.__name__}`.")
    return factory


def names(pattern="*"):
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def entry(name):
    """The :class:`ModelEntry` of ``name`` (a ``.tag`` suffix is ignored)."""
    base = name.split(".", 1)[0]
    if not _MODELS:
        raise BadArgument(f"unknown model {name!r}: no model is registered yet; import "
                          "larq_esbnn.models first (its families register themselves)")
    if base not in _MODELS:
        if any(c in base for c in "*?["):
            matching = names(base)
            raise BadArgument(f"{name!r} is a pattern; give one model name (matching: "
                              f"{', '.join(matching) or 'none'}; `larq-esbnn models PATTERN` lists them)")
        close = difflib.get_close_matches(base, names(), n=5, cutoff=0.6) or names()
        raise BadArgument(f"unknown model {name!r}; registered models: {', '.join(close)}")
    return _MODELS[base]


def get(name, **kwargs):
    """Build a registered model: ``get("es_resnet20", weights="cifar10")`` or
    ``get("es_resnet20.cifar10")``. ``features_only=True`` (with ``out_indices``)
    returns the stages' feature maps instead (:func:`features_model`)."""
    base, _, tag = name.partition(".")
    if tag:
        if kwargs.get("weights") not in (None, tag):
            raise ValueError(f"{name!r} names weights {tag!r} but weights={kwargs['weights']!r} was given")
        kwargs["weights"] = tag
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    if features_only:
        return features_model(base, out_indices, **kwargs)
    if out_indices is not None:
        raise BadArgument("out_indices selects feature maps: it needs features_only=True")
    return entry(base).build(**kwargs)


@dataclass(frozen=True)
class TorchRules:
    """How the authors' PyTorch checkpoint of one model names its tensors.

    source: which release it is (shown in messages and the command line's help).
    layer_rule: ``(Keras layer name, the model's arguments) -> (kind, torch name or
    tuple of names)``, or None for a layer the release does not have; the kinds are
    those :mod:`larq_esbnn.torch_import` converts (``conv``, ``bn``, ``bias``, ...).
    The arguments are :meth:`ModelEntry.resolved_args`, so a rule can depend on
    them (BCDNet's MLP blocks per repeat).
    release_args: optional ``kwargs -> kwargs``, the build arguments a checkpoint
    implies beyond its class count (BNext's stem stride); it receives the caller's
    arguments, with ``num_classes`` taken from the checkpoint's classifier.
    """

    source: str
    layer_rule: object
    release_args: object = None


def register_torch_rules(sources, layer_rule, release_args=None):
    """Register a family's checkpoint rules for the models in ``sources``
    (``{model name: release description}``); see :class:`TorchRules`."""
    for name, source in sources.items():
        if name in _TORCH_RULES:
            raise ValueError(f"PyTorch checkpoint rules for {name} are registered twice")
        _TORCH_RULES[name] = TorchRules(source, layer_rule, release_args)


def torch_rules(name):
    """The :class:`TorchRules` of model ``name``, or None when none are registered."""
    return _TORCH_RULES.get(name)


def torch_models():
    """``{model name: release}`` of every model with registered checkpoint rules."""
    return {name: rules.source for name, rules in _TORCH_RULES.items()}


# ----------------------------------------------------------------------------- feature maps
#
# ``get(name, features_only=True, out_indices=...)``: the model without its head,
# cut at the stage ends its family declares with :func:`register_features` (at the
# bottom of each family module), timm style. Declarations are data, so
# :func:`feature_info` answers without building anything.

_FEATURES = {}


@dataclass(frozen=True)
class FeatureStage:
    """One feature map a backbone offers: the output of Keras layer ``layer``."""

    index: int
    layer: str
    channels: int  # channels of the tensor: the ES / G stream width (tau * groups * C) included
    reduction: int  # input size / feature map size (the stride)
    stage: str  # which stage of the paper it ends


def register_features(names, stages):
    """Declare the stage ends of models ``names`` (one name or several).

    ``stages(args)`` gets the factory's arguments (its defaults, the registered
    variant's and the caller's, merged) and returns ``(layer, channels,
    reduction, stage)`` tuples, shallowest first.
    """
    for name in [names] if isinstance(names, str) else names:
        _FEATURES[name] = stages


def feature_info(name, **kwargs):
    """The feature maps ``get(name, features_only=True, **kwargs)`` can return, as
    :class:`FeatureStage` tuples (index, layer, channels, reduction, stage)."""
    e = entry(name)
    if e.name not in _FEATURES:
        with_features = ", ".join(n for n in names() if n in _FEATURES)
        raise BadArgument(f"{e.name} declares no feature stages; features_only works for {with_features}")
    e.check_args({k: v for k, v in kwargs.items() if k != "include_top"})
    return [FeatureStage(i, *stage) for i, stage in enumerate(_FEATURES[e.name](e.resolved_args(kwargs)))]


def _indices(out_indices, count, name):
    if out_indices is None:
        return list(range(count))
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    chosen = []
    for i in out_indices:
        if not isinstance(i, int) or not -count <= i < count:
            raise BadArgument(f"{name}: out_indices {tuple(out_indices)} must be stage numbers in "
                              f"0..{count - 1} (or negative, counted from the end)")
        chosen.append(i % count)
    if not chosen or len(set(chosen)) != len(chosen):
        raise BadArgument(f"{name}: out_indices must name distinct stages, got {tuple(out_indices)}")
    return chosen


def features_model(name, out_indices=None, **kwargs):
    """Model ``name`` without its head, returning the feature maps of stages
    ``out_indices`` (default: all; see :func:`feature_info`) as a list.

    The classifier is built with ``include_top=False`` and ``weights`` loaded into
    it exactly as for the classifier (a file with a head loads, the head is
    skipped); the returned model shares its layers and has ``feature_info``, the
    chosen :class:`FeatureStage` tuples.
    """
    import tensorflow as tf  # the registry itself stays importable without TensorFlow

    if kwargs.pop("include_top", False):
        raise BadArgument("features_only=True leaves the head out; drop include_top=True")
    for key in ("num_classes", "classifier_activation"):
        if kwargs.get(key) is not None:
            raise BadArgument(f"{key} describes the head, which features_only=True leaves out")
    stages = feature_info(name, **kwargs)
    chosen = [stages[i] for i in _indices(out_indices, len(stages), name)]
    model = entry(name).build(include_top=False, **kwargs)
    size = model.input_shape[1]
    outputs = []
    for stage in chosen:
        tensor = model.get_layer(stage.layer).output
        h, c = tensor.shape[1], tensor.shape[-1]
        if c != stage.channels or h * stage.reduction != size:
            raise RuntimeError(f"{name}: stage {stage.index} ({stage.layer}) is {h}x{c} at input {size}, "
                               f"declared {stage.channels} channels at stride {stage.reduction}")
        outputs.append(tensor)
    features = tf.keras.Model(model.inputs, outputs, name=f"{model.name}_features")
    features.feature_info = tuple(chosen)
    return features
