"""Side-by-side LCE latency of the zoo's ImageNet models and three reference models.

    python benchmarks/benchmark_lce.py --threads 1 --runs 40

Converts reactnet_a, es_reactnet_a, bcdnet_a, bcdnet_b, reactnet_18, bnext_t, es_bnext_t (random
weights, 224x224, after ``optimize_for_inference``), larq-zoo QuickNet (LCE) and
Keras MobileNetV2 / ResNet50 (plain TFLite, float32), times all of them
round-robin in LCE's interpreter, and writes ``results_lce.json`` and
``results_lce.md`` next to this file (table + the ratios the README quotes).
Latency does not depend on the weight values, so random weights are fine.
"""

import argparse
import json
import os
import pathlib
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import larq_esbnn  # noqa: E402,F401  (selects Keras 2 before TensorFlow loads)
from larq_esbnn import export  # noqa: E402

MODELS = ["reactnet_a", "es_reactnet_a", "bcdnet_a", "bcdnet_b", "reactnet_18", "bnext_t", "es_bnext_t"]
RATIOS = [("es_reactnet_a", "reactnet_a"), ("bcdnet_a", "reactnet_a"), ("bcdnet_b", "reactnet_a"),
          ("es_bnext_t", "bnext_t"), ("bnext_t", "reactnet_a"), ("es_binaryvit_s", "binaryvit_s")]
HERE = pathlib.Path(__file__).resolve().parent


def ratio_lines(rows):
    by = {r["model"]: r for r in rows}
    pairs = RATIOS + [(m, "quicknet") for m in MODELS if "quicknet" in by]
    lines = ["| ratio | min | median |", "|---|---|---|"]
    for a, b in pairs:
        if a in by and b in by:
            lines.append(
                f"| {a} / {b} | {by[a]['min_ms'] / by[b]['min_ms']:.3f} | "
                f"{by[a]['median_ms'] / by[b]['median_ms']:.3f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--xnnpack", action="store_true")
    parser.add_argument("--models", nargs="+", default=MODELS, help="zoo models to time (default: %(default)s)")
    parser.add_argument("--base", default=None, help="row the ratios refer to (default: the first model)")
    parser.add_argument("--no-references", action="store_true", help="skip QuickNet, MobileNetV2 and ResNet50")
    parser.add_argument("--out", default=str(HERE / "results_lce"),
                        help="output path without extension (.json and .md are written)")
    args = parser.parse_args(argv)
    rows = export.benchmark(
        args.models, threads=args.threads, runs=args.runs, warmup=args.warmup,
        input_size=args.input_size, base=args.base or args.models[0], use_xnnpack=args.xnnpack,
        references=not args.no_references,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    command = "python benchmarks/benchmark_lce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    setup = (f"{args.runs} timed runs per model after {args.warmup} warm-up runs, round-robin; "
             f"{args.threads} thread(s); batch 1; {args.input_size}x{args.input_size}; LCE "
             f"interpreter{' with XNNPack' if args.xnnpack else ' (XNNPack off)'}; "
             f"{platform.machine()}, {os.cpu_count()} CPUs")
    text = f"`{command.strip()}`\n\n{setup}\n\n{export.format_table(rows)}\n\n{ratio_lines(rows)}\n"
    pathlib.Path(args.out + ".md").write_text(text)
    pathlib.Path(args.out + ".json").write_text(
        json.dumps({"command": command.strip(), "setup": setup, "rows": rows}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
