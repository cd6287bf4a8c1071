"""``larq-esbnn`` command line: one entry point, sub-commands owned by the modules.

Each module in ``_COMMAND_MODULES`` defines ``add_commands(subparsers)``, which
adds its sub-commands and sets ``func`` (called with the parsed args; returns
an exit code or None).
"""

import argparse
import importlib
import sys

_COMMAND_MODULES = [
    "larq_esbnn.report",  # models, summary, capacity
    "larq_esbnn.weights",  # weights (list / fetch)
    "larq_esbnn.torch_import",  # import-torch
    "larq_esbnn.export",  # export, benchmark
    "larq_esbnn.train.cli",  # train, finetune, evaluate
    "larq_esbnn.inference",  # predict
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="larq-esbnn", description="ES-BNN / BCDNet binary networks for Larq and LCE"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.add_commands(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"larq-esbnn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
