"""MkDocs hooks: pages that come from the repository rather than from ``docs/``.

* The write-ups under ``zoo/`` and ``benchmarks/`` and the notebooks under
  ``notebooks/`` are added to the site at the same relative paths as in the
  repository (no copies, no symlinks), so each fact stays written once and the
  links between those files keep working.
* ``cli.md`` is generated from the argparse parser of ``larq_esbnn.cli`` on every
  build: one section per sub-command with its ``--help`` text.
* Each API page must document the objects a reader looks for (``API_EXPECTED``): if
  code moves and a module re-exports it without listing it in ``__all__``, mkdocstrings
  treats it as an import and leaves it out silently; this check fails the build instead.
"""

import argparse
import contextlib
import io
import os
import pathlib

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]

# repository files published as they are (glob patterns relative to ROOT)
REPO_FILES = [
    "zoo/*.md",
    "zoo/*.png",
    "benchmarks/*.md",
    "notebooks/*.ipynb",
]

HELP_WIDTH = "88"  # fits the code block of the page without scrolling

# objects each API page must show (a few per module, not the full list)
API_EXPECTED = {
    "api/quantizers.md": ["ScaledBinaryWeight", "CentredBinaryWeight", "TemperatureBinaryWeight"],
    "api/layers.md": ["LearnableBias", "RSign", "RPReLU", "BinaryConv2D", "ChannelTile"],
    "api/blocks.md": ["BlockConfig", "reactnet_block", "basic_layer", "mlp_block", "bnext_unit"],
    "api/models.md": ["get", "names", "reactnet_a", "es_reactnet_a", "bcdnet_a", "resnet20.resnet20"],
    "api/report.md": ["summary", "capacity"],
    "api/export.md": ["export_tflite", "check_export", "optimize_for_inference", "benchmark"],
    "api/detection.md": ["detect", "build_ssd", "ssd_resnet20"],
}


def _subcommands(parser, prefix):
    """Yield ``(command line, parser)`` for every sub-command, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                line = f"{prefix} {name}"
                yield line, sub
                yield from _subcommands(sub, line)


def render_cli():
    """The command-line page: the top-level help, then one section per sub-command."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps at the terminal width: fix it
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up logs
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from larq_esbnn.cli import build_parser

            parser = build_parser()
        parser.prog = "larq-esbnn"
        out = [
            "# Command line",
            "",
            "Every sub-command of `larq-esbnn`, with the help text its parser prints "
            "(`larq-esbnn COMMAND --help`). This page is generated from the parser "
            "(`larq_esbnn.cli.build_parser`) each time the site is built, so it always "
            "matches the installed code. What the data and weights arguments accept is "
            "explained in [Training](training.md#data) and [Pretrained weights](weights.md).",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
        for line, sub in _subcommands(parser, "larq-esbnn"):
            out += [f"## `{line}`", "", "```text", sub.format_help().rstrip(), "```", ""]
        # help texts name the recipes folder of the installed checkout: show it relative
        return "\n".join(out).replace(f"{ROOT}/", "")
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


@event_priority(100)  # before mkdocs-jupyter looks for notebooks
def on_files(files, config):
    present = {f.src_uri for f in files}
    for pattern in REPO_FILES:
        for path in sorted(ROOT.glob(pattern)):
            src_uri = path.relative_to(ROOT).as_posix()
            if src_uri not in present:
                # a plain File whose source folder is the repository root (not a generated
                # file): mkdocs-jupyter finds notebooks through File.src_dir
                files.append(File(src_uri, str(ROOT), config.site_dir, config.use_directory_urls))
    files.append(File.generated(config, "cli.md", content=render_cli()))
    return files


def on_page_content(html, page, config, files):
    expected = API_EXPECTED.get(page.file.src_uri, [])
    module = page.file.src_uri[len("api/"):-len(".md")]
    missing = [name for name in expected if f'id="larq_esbnn.{module}.{name}"' not in html]
    if missing:
        raise PluginError(
            f"{page.file.src_uri}: larq_esbnn.{module} documents no {', '.join(missing)}. "
            "If they moved to another module, import them here and list them in __all__ "
            "(mkdocstrings shows imported names only when __all__ lists them)."
        )
    return html
