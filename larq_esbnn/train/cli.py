"""``larq-esbnn train | finetune | evaluate``."""

import argparse
import json
import pathlib

RECIPES = pathlib.Path(__file__).resolve().parents[2] / "training"


def _model_args(pairs):
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--arg expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _train(args):
    from larq_esbnn.train.recipe import Recipe, default_recipe
    from larq_esbnn.train.trainer import train

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
        if getattr(args, key):  # 0 / None: keep the recipe's value
            setattr(recipe, key, getattr(args, key))
    for key in ("teacher", "seed", "init_weights"):
        if getattr(args, key) is not None:
            setattr(recipe, key, getattr(args, key))
    if args.teachers:
        recipe.teachers = [t for t in args.teachers.split(",") if t]
        recipe.teacher = ""
    recipe.model_args.update(_model_args(args.arg))
    if args.epochs:
        recipe = recipe.with_epochs(args.epochs)
    if args.plain_training:
        recipe.fused_training = False
    if args.lr_scale != 1:
        for step in recipe.steps:
            step.lr *= args.lr_scale
    recipe.validate()
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    train(recipe, args.output, resume=args.resume, strategy=args.strategy)


def _finetune(args):
    from larq_esbnn.train.trainer import finetune

    finetune(args.model, args.weights, args.data, args.output, epochs=args.epochs, batch_size=args.batch_size,
             lr=args.lr, freeze_backbone=args.freeze_backbone, image_size=args.image_size, resume=args.resume,
             strategy=args.strategy, model_args=_model_args(args.arg), train_limit=args.train_limit,
             test_limit=args.test_limit)


def _evaluate(args):
    from larq_esbnn import models
    from larq_esbnn.train import data as data_lib
    from larq_esbnn.train.trainer import INFERENCE_BATCH, evaluate

    split = data_lib.load(args.data, args.split)
    size = args.image_size or models.entry(args.model).input_size
    model = models.get(args.model, weights=args.weights, num_classes=split.num_classes,
                       input_shape=(size, size, 3), **_model_args(args.arg))
    metrics = evaluate(model, split, size, args.batch_size or INFERENCE_BATCH, limit=args.limit or None)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.model} on {args.data} ({args.split}): top-1 {metrics['top1']:.4f}, "
              f"top-5 {metrics['top5']:.4f}, {metrics['n']} images")


def add_commands(sub):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--arg", action="append", metavar="KEY=VALUE", help="model argument, e.g. tau=2")
    common.add_argument("--image-size", type=int, default=0, help="input size (default: the model's)")

    p = sub.add_parser("train", parents=[common], help="train a model with a recipe (two-step BNN recipe by default)")
    p.add_argument("model", nargs="?", help="registered model name (overrides the recipe's)")
    p.add_argument("--recipe", help=f"recipe TOML file (see {RECIPES})")
    p.add_argument("--data", help="image folder (DIR/train, DIR/test) or TFDS name")
    p.add_argument("--epochs", type=int, default=0, help="total epochs, spread over the recipe's steps")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--teacher", default=None, help="frozen real-valued teacher (Keras model file)")
    p.add_argument("--teachers", default=None, metavar="ASSISTANT,MAIN",
                   help="the released BNext two-teacher distillation (no label loss); each a teacher spec "
                        "as for --teacher, or keras:EfficientNetB0 (tf.keras.applications, ImageNet)")
    p.add_argument("--init-weights", default=None, metavar="W",
                   help="start the first step from these weights of MODEL (tag, file or URL), e.g. cifar10")
    p.add_argument("--output", required=True, help="run folder (checkpoints, logs, weights.h5)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--strategy", default="auto", choices=["auto", "mirrored", "default"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--plain-training", action="store_true",
                   help="train with the plain Keras ops instead of the fused training path (debugging)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply the peak lr of every step (lr searches)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic TF ops (bit-identical reruns and resumes; slower)")
    p.add_argument("--train-limit", type=int, default=0, help="train on a fixed random subset of N images")
    p.add_argument("--test-limit", type=int, default=0, help="final evaluation on a fixed subset of N test images")
    p.add_argument("--val-limit", type=int, default=0,
                   help="per-epoch test metrics on N test images (default: as --test-limit)")
    p.set_defaults(func=_train)

    p = sub.add_parser("finetune", parents=[common], help="replace the head and fine-tune a pretrained model")
    p.add_argument("model")
    p.add_argument("--weights", required=True, help="tag, file or URL of the pretrained weights")
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--strategy", default="auto", choices=["auto", "mirrored", "default"])
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=0)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("evaluate", parents=[common], help="top-1 / top-5 of a model on a data set")
    p.add_argument("model")
    p.add_argument("--weights", required=True, help="tag, file or URL")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=0,
                   help="images per inference call (default trainer.INFERENCE_BATCH = 32, the fastest on CPU)")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print {top1, top5, n} as JSON")
    p.set_defaults(func=_evaluate)
