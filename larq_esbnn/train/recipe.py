"""Experiment recipes: one TOML file per experiment in ``training/``.

A recipe names the model and its arguments, the data, and the steps of the
two-step BNN recipe (ReActNet, Liu et al., ECCV 2020, implementation details;
BCDNet and ES-BNN train the same way): step 1 binary activations with real weights,
step 2 binary weights and activations initialised from step 1. Example::

    model = "resnet20"
    data = "../shared/datasets/cifar10"
    image_size = 32
    batch_size = 128
    label_smoothing = 0.1
    teacher = ""            # Keras model file or "" for none
    init_weights = ""       # e.g. "cifar10": start from the model's registered weights

    [[steps]]               # step 1
    epochs = 10
    binary_weights = false
    lr = 2e-3
    weight_decay = 1e-2
    warmup_epochs = 1

    [[steps]]               # step 2
    epochs = 10
    lr = 5e-4
    weight_decay = 0.0
"""

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field

from larq_esbnn.errors import BadArgument


@dataclass
class Step:
    epochs: int
    lr: float
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    binary_weights: bool = True
    # "adamw" (FusedAdamW, decoupled weight decay) or "sgd" (Nesterov momentum; the
    # weight decay is then applied as w -= lr * weight_decay * w at every step)
    optimizer: str = "adamw"
    momentum: float = 0.9  # SGD only


@dataclass
class Recipe:
    model: str
    data: str
    model_args: dict = field(default_factory=dict)
    image_size: int = 0  # 0: the model's default input size
    batch_size: int = 256
    seed: int = 0
    label_smoothing: float = 0.1
    teacher: str = ""
    distill_weight: float = 0.5
    steps: list = field(default_factory=list)
    train_limit: int = 0  # use only a fixed random subset of N training images (0: all)
    test_limit: int = 0  # final evaluation on a fixed subset of N test images (0: all)
    val_limit: int = 0  # per-epoch test metrics on N images (0: same as test_limit)
    fused_training: bool = True  # False: plain Keras ops in the training step (debugging)
    # BNext weight temperature (models with TemperatureBinaryConv2D only): T = start * decay^epoch
    # at the start of every epoch (global epoch index over all steps); 0 disables the schedule
    weight_temperature_start: float = 1.0
    weight_temperature_decay: float = 0.9
    # the released BNext two-teacher distillation: [assistant, main] teacher specs (see
    # trainer.load_teacher); replaces `teacher` and the label loss when given
    teachers: list = field(default_factory=list)
    # start the first trained step from these weights of `model` (a tag such as "cifar10",
    # an .h5 file or a URL) instead of a fresh initialisation: continues a shipped model
    init_weights: str = ""
    # a folder (relative to the recipe file; "{model}" is replaced by the model name)
    # holding a committed snapshot of this run: weights.h5 + position.json (step and
    # epoch reached, the schedule, sha256) + history.csv. `train --resume` continues
    # from it when the run folder has no checkpoint (see trainer.read_snapshot)
    snapshot: str = ""
    # random-resized-crop augmentation above 64 px: the smallest fraction of the image
    # area a training crop keeps (0.08 is the ImageNet convention)
    min_crop_area: float = 0.08
    # fine-tuning only (`larq-esbnn finetune --recipe`): the learning rate of every
    # pretrained layer is lr * backbone_lr_scale, the new head's is lr (0 freezes the
    # backbone; ignored when training from scratch, where every layer is new)
    backbone_lr_scale: float = 1.0

    @classmethod
    def from_dict(cls, raw):
        raw = dict(raw)
        _check_fields(cls, raw, "recipe")
        if not isinstance(raw.get("steps", []), list):
            raise BadArgument(f"recipe: steps must be a list of [[steps]] tables, got {raw['steps']!r}")
        steps = []
        for i, s in enumerate(raw.get("steps", []), start=1):
            if not isinstance(s, (Step, dict)):
                raise BadArgument(f"recipe step {i}: expected a [[steps]] table, got {s!r}")
            if isinstance(s, dict):
                _check_fields(Step, s, f"recipe step {i}")
            steps.append(s if isinstance(s, Step) else Step(**s))
        raw["steps"] = steps
        recipe = cls(**raw)
        recipe.validate()
        return recipe

    @classmethod
    def load(cls, path):
        with open(path, "rb") as f:
            try:
                recipe = cls.from_dict(tomllib.load(f))
            except BadArgument as err:
                raise BadArgument(f"{path}: {err}") from None
        if recipe.snapshot and not os.path.isabs(recipe.snapshot):
            recipe.snapshot = os.path.join(os.path.dirname(os.path.abspath(path)), recipe.snapshot)
        return recipe

    def snapshot_dir(self):
        """The snapshot folder of this recipe's model, or None."""
        return self.snapshot.replace("{model}", self.model) if self.snapshot else None

    def validate(self):
        if not self.steps:
            raise ValueError("a recipe needs at least one [[steps]] entry")
        for i, step in enumerate(self.steps):
            if step.epochs < 0 or step.lr <= 0:
                raise ValueError(f"step {i + 1}: epochs must be >= 0 and lr > 0, got {step}")
            if step.optimizer not in ("adamw", "sgd"):
                raise ValueError(f"step {i + 1}: optimizer must be 'adamw' or 'sgd', got {step.optimizer!r}")
            if not 0 <= step.momentum < 1:
                raise ValueError(f"step {i + 1}: momentum must be in [0, 1), got {step.momentum}")
            if step.warmup_epochs < 0 or step.weight_decay < 0:
                raise BadArgument(f"step {i + 1}: warmup_epochs and weight_decay must be >= 0, got "
                                  f"{step.warmup_epochs} and {step.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise BadArgument(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.weight_temperature_start < 0 or not 0 < self.weight_temperature_decay <= 1:
            raise ValueError(
                "weight_temperature_start must be >= 0 and weight_temperature_decay in (0, 1], got "
                f"{self.weight_temperature_start} and {self.weight_temperature_decay}"
            )
        if not 0 < self.min_crop_area <= 1:
            raise BadArgument(f"min_crop_area must be in (0, 1], got {self.min_crop_area}")
        if not 0 <= self.backbone_lr_scale <= 1:
            raise BadArgument(f"backbone_lr_scale must be in [0, 1], got {self.backbone_lr_scale}")
        if self.backbone_lr_scale not in (0, 1) and any(s.optimizer != "adamw" for s in self.steps):
            raise BadArgument(f"backbone_lr_scale {self.backbone_lr_scale} needs optimizer = \"adamw\" in every "
                              "step (0 and 1 work with any optimizer)")
        if self.teachers and (self.teacher or len(self.teachers) < 2):
            raise ValueError(
                f"teachers needs at least two entries ([assistant, main]) and no `teacher`; got "
                f"teachers={self.teachers!r}, teacher={self.teacher!r}"
            )

    def with_epochs(self, total):
        """Spread ``total`` epochs over the steps: the two-step recipe gives step 1
        ``total // 2`` and step 2 the rest (1 epoch -> step 2 only)."""
        if total < 1:
            raise ValueError(f"--epochs must be >= 1, got {total}")
        steps = [dataclasses.replace(s) for s in self.steps]
        if len(steps) == 1:
            steps[0].epochs = total
        else:
            first = total // len(steps)
            for s in steps[:-1]:
                s.epochs = first
            steps[-1].epochs = total - first * (len(steps) - 1)
        return dataclasses.replace(self, steps=steps)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2)


# TOML value types accepted for each annotated field (an int where a float is expected is fine)
_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,), list: (list,)}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               dict: "a table", list: "a list"}


def _check_fields(cls, raw, where):
    """Unknown keys, missing required keys and values of the wrong type of the
    dataclass ``cls`` in ``raw`` -> :class:`BadArgument` naming the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise BadArgument(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    missing = [name for name, f in fields.items() if name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise BadArgument(f"{where}: missing required keys {missing}")
    for name, value in raw.items():
        kind = fields[name].type
        kind = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "list": list}.get(kind, kind)
        allowed = _TYPES.get(kind)
        if allowed is None or name == "steps":
            continue
        if not isinstance(value, allowed) or (kind is not bool and isinstance(value, bool)):
            raise BadArgument(f"{where}: {name} must be {_TYPE_NAMES[kind]}, got {value!r}")


def default_recipe(model, data):
    """The two-step recipe of the module docstring with batch and lr for small data sets."""
    return Recipe(
        model=model,
        data=data,
        batch_size=128,
        steps=[
            Step(epochs=1, lr=2e-3, weight_decay=1e-2, warmup_epochs=0.5, binary_weights=False),
            Step(epochs=1, lr=5e-4, weight_decay=0.0),
        ],
    )
