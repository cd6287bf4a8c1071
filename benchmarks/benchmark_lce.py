"""Re-run the LCE latency table kept in ``benchmarks/results_lce.{md,json}``.

    python benchmarks/benchmark_lce.py --threads 1 --runs 40 [--xnnpack] [--out PREFIX]

is ``larq-esbnn benchmark`` (:func:`larq_esbnn.export.benchmark`) on the zoo's
ImageNet models below, next to QuickNet, MobileNetV2 and ResNet50, writing the
result files here; every option is the command's own. For other models, call
the command itself: ``larq-esbnn benchmark MODEL ... --out PREFIX``.
"""

import pathlib
import sys

MODELS = ["reactnet_a", "es_reactnet_a", "bcdnet_a", "bcdnet_b", "reactnet_18", "bnext_t", "es_bnext_t"]
RESULTS = pathlib.Path(__file__).resolve().parent / "results_lce"


def main(argv=None):
    from larq_esbnn import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.main(["benchmark", *MODELS, "--out", str(RESULTS), "--overwrite", *argv])


if __name__ == "__main__":
    sys.exit(main())
