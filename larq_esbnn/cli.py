"""``larq-esbnn`` command line: one entry point, sub-commands owned by the modules.

Each module in ``_COMMAND_MODULES`` defines ``add_commands(subparsers)``, which
adds its sub-commands and sets ``func`` (called with the parsed args; returns
an exit code or None).
"""

import argparse
import importlib
import os
import sys
import traceback

from larq_esbnn.errors import UserError

_COMMAND_MODULES = [
    "larq_esbnn.report",  # models, summary, capacity
    "larq_esbnn.weights",  # weights (list / fetch)
    "larq_esbnn.torch_import",  # import-torch
    "larq_esbnn.export",  # export, benchmark
    "larq_esbnn.train.cli",  # train, finetune, evaluate
    "larq_esbnn.inference",  # predict
    "larq_esbnn.detection.train",  # detect-train, detect-eval
]

# command -> (module that defines it, one line for ``larq-esbnn --help``): the listing and
# the choice of module need no import, so ``--help`` does not start TensorFlow
_COMMANDS = {
    "models": ("larq_esbnn.report", "list registered models (--count: parameters and BOPs)"),
    "summary": ("larq_esbnn.report", "per-layer BOPs / FLOPs / params / memory of a model"),
    "capacity": ("larq_esbnn.report", "representation capacity of every binary layer"),
    "weights": ("larq_esbnn.weights", "list registered weights, or fetch them"),
    "import-torch": ("larq_esbnn.torch_import", "convert a released PyTorch checkpoint to Keras .h5 weights"),
    "export": ("larq_esbnn.export", "convert a zoo model to an LCE TFLite flatbuffer and check its binary ops"),
    "benchmark": ("larq_esbnn.export", "LCE latency of zoo models next to QuickNet, MobileNetV2, ResNet50"),
    "train": ("larq_esbnn.train.cli", "train a model with a recipe (two-step BNN recipe by default)"),
    "finetune": ("larq_esbnn.train.cli", "replace the head and fine-tune a pretrained model"),
    "evaluate": ("larq_esbnn.train.cli", "top-1 / top-5 of a model on a data set"),
    "predict": ("larq_esbnn.inference", "top-5 classes of image files, with the weights' own preprocessing"),
    "detect-train": ("larq_esbnn.detection.train", "train a binary SSD detector on a folder of images with boxes"),
    "detect-eval": ("larq_esbnn.detection.train", "mAP@0.5 and mAP@[.5:.95] of a trained detector (pycocotools)"),
}


def build_parser(command=None):
    """The argument parser; with ``command``, only the module defining it is imported
    (an unknown or missing command gets the listing of ``_COMMANDS``, importing nothing)."""
    parser = argparse.ArgumentParser(
        prog="larq-esbnn", description="ES-BNN / BCDNet binary networks for Larq and LCE"
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also accepted after COMMAND)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's start-up and C++ log lines (hidden by default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command is not None and command not in _COMMANDS:
        for name, (_, text) in _COMMANDS.items():
            sub.add_parser(name, help=text, add_help=False)
        return parser
    wanted = [_COMMANDS[command][0]] if command is not None else _COMMAND_MODULES
    # the families register their models, weights records and checkpoint rules on
    # import; weights and torch_import sit below them and only look names up
    from larq_esbnn import models  # noqa: F401

    for module_name in wanted:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.add_commands(sub)
    return parser


def _split_global_flags(argv):
    """``--debug`` / ``--verbose`` anywhere on the line (argparse only takes them before COMMAND)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {flag: flag in argv for flag in ("--debug", "--verbose")}
    if "--" in argv:  # after "--" everything is positional
        cut = argv.index("--")
        flags = {flag: flag in argv[:cut] for flag in flags}
        return [a for a in argv[:cut] if a not in flags] + argv[cut:], flags
    return [a for a in argv if a not in flags], flags


def _start_tensorflow_quietly():
    """Import TensorFlow without its start-up lines (CUDA probing, factory registration):
    TF_CPP_MIN_LOG_LEVEL hides some, the rest are written to file descriptor 2 before
    logging is set up, so that descriptor points at /dev/null during the import.
    ``--verbose`` skips this. An import error still shows, once stderr is back."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        importlib.import_module("larq_esbnn")  # selects Keras 2 before TensorFlow loads
        importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# what a user can get wrong: one line and exit 2 (the package's own types, and the
# builtin ones that argument and file checks raise); anything else is a bug
_USER_ERRORS = (UserError, ValueError, OSError)


def main(argv=None):
    argv, flags = _split_global_flags(argv)
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    command = argv[first] if first < len(argv) else ""  # "": no command, the listing only
    if command in _COMMANDS and not (flags["--verbose"] or "-v" in argv[:first]):
        _start_tensorflow_quietly()
    parser = build_parser(command)
    args = parser.parse_args(argv)
    args.debug = args.debug or flags["--debug"]
    args.argv = argv
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"larq-esbnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as err:
        if args.debug:
            traceback.print_exc()
        message = str(err) or type(err).__name__
        print(f"larq-esbnn {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
