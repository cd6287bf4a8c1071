"""``larq-esbnn train | finetune | evaluate``."""

import argparse
import contextlib
import json
import os
import pathlib
import shlex
import shutil
import sys

from larq_esbnn.errors import (
    BadArgument,
    BadData,
    BadWeights,
    OutputExists,
    non_negative_int,
    positive_float,
    positive_int,
)

RECIPES = pathlib.Path(__file__).resolve().parents[2] / "training"


# model arguments the commands set themselves (from the data, --image-size, --weights)
_SET_BY_COMMAND = ("num_classes", "input_shape", "input_tensor", "weights", "include_top", "name")


def _model_args(pairs, model=None):
    """``--arg KEY=VALUE`` pairs -> dict; with ``model``, checked against its factory."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadArgument(f"--arg expects KEY=VALUE, got {pair!r}")
        if key in _SET_BY_COMMAND:
            raise BadArgument(f"--arg {key} is set by the command (from the data's classes, --image-size "
                              "or --weights); remove it")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    if model is not None:
        from larq_esbnn import models

        models.entry(model).check_args(out)
    return out


def _check_output_folder(out, overwrite):
    """A folder holding files but no run (``state/``) is the user's: refuse to write into it."""
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--output {out} is a file; give a folder for the run")
    if overwrite or not out.is_dir() or (out / "state").is_dir():
        return
    files = sorted(p.name for p in out.iterdir())
    if files:
        raise OutputExists(f"--output {out} already holds files that are not a run ({', '.join(files[:5])}); "
                           "choose another folder or pass --overwrite to write into it")


def _check_resume(out, recipe):
    """--resume continues the same model; say so when there is nothing to continue."""
    out = pathlib.Path(out)
    earlier = out / "recipe.json"
    if earlier.is_file():
        try:
            model = json.loads(earlier.read_text()).get("model")
        except (json.JSONDecodeError, AttributeError):
            model = None
        if model and model != recipe.model:
            raise BadArgument(f"--resume: {out} holds a run of {model}, not {recipe.model}; resume it with "
                              f"{model} or choose another --output")
    if not (out / "state" / "latest.json").exists() and not recipe.snapshot_dir():
        print(f"--resume: no earlier run in {out} (no state/latest.json) and the recipe names no "
              "snapshot: starting a fresh run", file=sys.stderr)


@contextlib.contextmanager
def _run_folder(out, argv):
    """Remove a run folder this command created when it fails before its first checkpoint;
    on Ctrl-C, point at the last checkpoint and the command that resumes from it."""
    out = pathlib.Path(out)
    created = not out.exists()
    try:
        yield
    except KeyboardInterrupt:
        latest = out / "state" / "latest.json"
        resume = argv if "--resume" in argv else [*argv, "--resume"]
        if latest.exists():
            where = f"checkpoint {json.loads(latest.read_text()).get('prefix')} (saved after every epoch)"
        else:
            where = "no checkpoint yet (one is saved after every epoch); resuming starts over"
        print(f"\ninterrupted: {where}\ncontinue with: larq-esbnn {shlex.join(resume)}", file=sys.stderr)
        raise
    except Exception:
        if created and not (out / "state" / "latest.json").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(args):
    from larq_esbnn.train.recipe import Recipe, default_recipe
    from larq_esbnn.train.trainer import has_binary_weights, train

    if args.recipe:
        recipe = Recipe.load(args.recipe)
        if args.model and args.model != recipe.model:
            recipe.model = args.model
    elif args.model:
        if not args.data:
            raise ValueError("--data is required without --recipe")
        recipe = default_recipe(args.model, args.data)
    else:
        raise ValueError("give MODEL or --recipe FILE")
    for key in ("data", "batch_size", "image_size", "train_limit", "test_limit", "val_limit"):
        if getattr(args, key) is not None:  # not given: keep the recipe's value
            setattr(recipe, key, getattr(args, key))
    for key in ("teacher", "seed", "init_weights"):
        if getattr(args, key) is not None:
            setattr(recipe, key, getattr(args, key))
    if args.teachers:
        recipe.teachers = [t for t in args.teachers.split(",") if t]
        recipe.teacher = ""
    recipe.model_args.update(_model_args(args.arg, recipe.model))
    if args.epochs is not None:
        recipe = recipe.with_epochs(args.epochs)
    if args.plain_training:
        recipe.fused_training = False
    if args.snapshot_dir:
        recipe.snapshot = os.path.abspath(args.snapshot_dir)
        folder = pathlib.Path(recipe.snapshot_dir())
        try:  # checked before any work: a snapshot is first written after an epoch
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadArgument(f"--snapshot-dir {args.snapshot_dir}: cannot create {folder} ({err.strerror})") from None
        if not os.access(folder, os.W_OK):
            raise BadArgument(f"--snapshot-dir {args.snapshot_dir}: {folder} is not writable")
    if args.lr_scale != 1:
        for step in recipe.steps:
            step.lr *= args.lr_scale
    recipe.validate()
    _check_output_folder(args.output, args.overwrite)
    if args.resume:
        _check_resume(args.output, recipe)
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    binary = has_binary_weights(recipe.model)
    plan = ", ".join(f"step {i} {s.epochs} ({'binary' if s.binary_weights else 'real'} weights)" if binary
                     else f"step {i} {s.epochs} (real-valued model)" for i, s in enumerate(recipe.steps, 1))
    print(f"{recipe.model}: {sum(s.epochs for s in recipe.steps)} epochs: {plan}")
    with _run_folder(args.output, args.argv):
        train(recipe, args.output, resume=args.resume, strategy=args.strategy,
              write_snapshots=bool(args.snapshot_dir))


# fine-tuning without --recipe: one step, AdamW, no warm-up (trainer.finetune)
FINETUNE_DEFAULTS = {"epochs": 5, "batch_size": 64, "lr": 1e-3}


def _finetune_recipe(args):
    """The fine-tuning recipe: ``--recipe`` with the options given on the command line
    on top, or the defaults of :func:`larq_esbnn.train.trainer.finetune`."""
    from larq_esbnn.train.recipe import Recipe, Step

    if args.recipe:
        recipe = Recipe.load(args.recipe)
        if args.model:
            recipe.model = args.model
    elif not args.model or not args.data:
        raise BadArgument("finetune needs MODEL and --data, or --recipe FILE (e.g. training/finegrained/cub200.toml)")
    else:
        recipe = Recipe(model=args.model, data=args.data, batch_size=FINETUNE_DEFAULTS["batch_size"],
                        steps=[Step(epochs=FINETUNE_DEFAULTS["epochs"], lr=FINETUNE_DEFAULTS["lr"])])
    if args.data:
        recipe.data = args.data
    for key in ("batch_size", "image_size", "seed"):
        if getattr(args, key) is not None:
            setattr(recipe, key, getattr(args, key))
    for key in ("train_limit", "test_limit"):
        if getattr(args, key):
            setattr(recipe, key, getattr(args, key))
    if args.epochs is not None:
        recipe.steps[0].epochs = args.epochs
    if args.lr is not None:
        recipe.steps[0].lr = args.lr
    if args.freeze_backbone:
        recipe.backbone_lr_scale = 0.0
    elif args.backbone_lr_scale is not None:
        recipe.backbone_lr_scale = args.backbone_lr_scale
    recipe.model_args.update(_model_args(args.arg, recipe.model))
    recipe.validate()
    return recipe


def _finetune(args):
    from larq_esbnn.train.trainer import finetune_recipe

    recipe = _finetune_recipe(args)
    weights = None if args.weights.lower() in ("none", "scratch") else args.weights
    _check_output_folder(args.output, args.overwrite)
    start = "from a random initialisation" if weights is None else f"from {weights}"
    print(f"{recipe.model}: fine-tuning {start} on {recipe.data}, {recipe.steps[0].epochs} epochs, "
          f"lr {recipe.steps[0].lr:g} (backbone x{recipe.backbone_lr_scale:g})")
    with _run_folder(args.output, args.argv):
        finetune_recipe(recipe, weights, args.output, resume=args.resume, strategy=args.strategy)


def _evaluate(args):
    from larq_esbnn import models
    from larq_esbnn.inference import check_run_model, run_record
    from larq_esbnn.train import data as data_lib
    from larq_esbnn.train.trainer import INFERENCE_BATCH, evaluate

    check_run_model(args.model, args.weights)
    # a fine-tuning run's weights: its input size and model arguments are recorded beside them
    recorded = run_record(args.weights)
    model_args = {**recorded["model_args"], **_model_args(args.arg, args.model)}
    split = data_lib.load(args.data, args.split, limit=args.limit)
    size = args.image_size or recorded["input_size"] or models.entry(args.model).input_size
    try:
        model = models.get(args.model, weights=args.weights, num_classes=split.num_classes,
                           input_shape=(size, size, 3), **model_args)
    except BadWeights as err:
        if "head" not in str(err):
            raise
        raise BadData(f"--data {args.data} has {split.num_classes} classes, but the weights {args.weights!r} "
                      f"classify another number ({err})") from None
    metrics = evaluate(model, split, size, args.batch_size or INFERENCE_BATCH, limit=args.limit)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.model} on {args.data} ({args.split}): top-1 {metrics['top1']:.4f}, "
              f"top-5 {metrics['top5']:.4f}, {metrics['n']} images")


def add_commands(sub):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--arg", action="append", metavar="KEY=VALUE", help="model argument, e.g. tau=2")
    common.add_argument("--image-size", type=positive_int, default=None, help="input size (default: the model's)")

    p = sub.add_parser("train", parents=[common], help="train a model with a recipe (two-step BNN recipe by default)")
    p.add_argument("model", nargs="?", help="registered model name (overrides the recipe's)")
    p.add_argument("--recipe", help=f"recipe TOML file (see {RECIPES})")
    p.add_argument("--data", help="image folder (DIR/train, DIR/test) or TFDS name")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="total epochs, spread evenly over the recipe's steps (the two-step recipe: "
                        "step 1 gets N // 2, step 2 the rest, so --epochs 1 trains step 2 only)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the recipe's")
    p.add_argument("--teacher", default=None, help="frozen real-valued teacher (Keras model file)")
    p.add_argument("--teachers", default=None, metavar="ASSISTANT,MAIN",
                   help="the released BNext two-teacher distillation (no label loss); each a teacher spec "
                        "as for --teacher, or keras:EfficientNetB0 (tf.keras.applications, ImageNet)")
    p.add_argument("--init-weights", default=None, metavar="W",
                   help="start the first step from these weights of MODEL (tag, file or URL), e.g. cifar10")
    p.add_argument("--output", required=True, help="run folder (checkpoints, logs, weights.h5)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--snapshot-dir", default=None, metavar="DIR",
                   help="after every epoch, also write the committable snapshot (weights, position in the "
                        "schedule, history) to DIR ({model}: the model name); --resume continues from it "
                        "when --output is gone. Default: the recipe's snapshot folder, read only")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --output folder that holds other files (they may be replaced)")
    p.add_argument("--strategy", default="auto", choices=["auto", "mirrored", "default"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--plain-training", action="store_true",
                   help="train with the plain Keras ops instead of the fused training path (debugging)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply the peak lr of every step (lr searches)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic TF ops (bit-identical reruns and resumes; slower)")
    p.add_argument("--train-limit", type=positive_int, default=None,
                   help="train on a fixed random subset of N images")
    p.add_argument("--test-limit", type=positive_int, default=None,
                   help="final evaluation on a fixed subset of N test images")
    p.add_argument("--val-limit", type=positive_int, default=None,
                   help="per-epoch test metrics on N test images (default: as --test-limit)")
    p.set_defaults(func=_train)

    p = sub.add_parser("finetune", parents=[common], help="replace the head and fine-tune a pretrained model",
                       description="Fine-tune MODEL with a new head for the classes of --data. Without --recipe: "
                       "one step, AdamW, no warm-up, 5 epochs, batch 64, lr 1e-3. With --recipe (e.g. "
                       f"{RECIPES / 'finegrained'}/*.toml) the recipe's settings, the options given here on top.")
    p.add_argument("model", nargs="?", help="registered model name (overrides the recipe's)")
    p.add_argument("--recipe", help="fine-tuning recipe TOML (one step; see training/finegrained/README.md)")
    p.add_argument("--weights", required=True,
                   help="tag, .h5 file, PyTorch checkpoint (.pth) or URL of the pretrained weights; "
                        "'none' trains from a random initialisation")
    p.add_argument("--data", default=None,
                   help="image folder, unpacked CUB / Flowers-102 / FGVC-Aircraft / Stanford Cars / Stanford Dogs "
                        "archive, or TFDS name (default: the recipe's)")
    p.add_argument("--output", required=True)
    p.add_argument("--epochs", type=positive_int, default=None, help="default: the recipe's, else 5")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the recipe's, else 64")
    p.add_argument("--lr", type=positive_float, default=None, help="peak lr of the head (default: the recipe's, else 1e-3)")
    p.add_argument("--backbone-lr-scale", type=float, default=None, metavar="S",
                   help="the pretrained layers train at S x lr (0..1; default: the recipe's, else 1)")
    p.add_argument("--freeze-backbone", action="store_true", help="train the head only (--backbone-lr-scale 0)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --output folder that holds other files (they may be replaced)")
    p.add_argument("--strategy", default="auto", choices=["auto", "mirrored", "default"])
    p.add_argument("--train-limit", type=non_negative_int, default=0, help="0: all images")
    p.add_argument("--test-limit", type=non_negative_int, default=0, help="0: all images")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("evaluate", parents=[common], help="top-1 / top-5 of a model on a data set")
    p.add_argument("model")
    p.add_argument("--weights", required=True, help="tag, file or URL")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per inference call (default trainer.INFERENCE_BATCH = 32, the fastest on CPU)")
    p.add_argument("--limit", type=positive_int, default=None, help="score a fixed subset of N images")
    p.add_argument("--json", action="store_true", help="print {top1, top5, n} as JSON")
    p.set_defaults(func=_evaluate)
