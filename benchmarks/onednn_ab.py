"""Training steps with TensorFlow's default CPU kernels against its oneDNN kernels.

    python benchmarks/onednn_ab.py [MODEL ...] [--steps 4] [--rounds 2] [--threads 1]
        [--batch-size 128] [--no-teacher] [--markdown onednn.md [--overwrite]]

``import larq_esbnn`` sets ``TF_ENABLE_ONEDNN_OPTS=1`` unless the variable is set.
TensorFlow reads it once per process, so every measurement here is a child process
(``--child``) started with the variable at 0 or 1. Children run one at a time, the
two settings alternating within each round, so load from other processes hits both
alike. Each child builds the CIFAR-10 MODEL (binary weights and activations) inside
``BNNTrainer`` with a ``resnet20_fp`` teacher (random weights: speed only), as
``larq-esbnn train`` does, takes 2 untimed steps, then times ``--steps`` steps of
``--batch-size`` random in-memory images on ``--threads`` TF threads (the campaign's
lanes use one). Reported: the median over rounds, and oneDNN / default.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CIFAR_MODELS = ("resnet20", "es_resnet20", "g_resnet20", "es_g_resnet20")


def child(args):
    import larq_esbnn  # noqa: F401  (first: Keras 2 and the kernels chosen by the parent)

    # isort: split
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    from larq_esbnn import registry
    from larq_esbnn.train.trainer import BNNTrainer

    tf.random.set_seed(0)
    student = registry.get(args.model, input_shape=(32, 32, 3), num_classes=10)
    teacher = registry.get("resnet20_fp", input_shape=(32, 32, 3), num_classes=10) if args.teacher else None
    trainer = BNNTrainer(student, teacher)
    trainer.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    rng = np.random.RandomState(0)
    x = rng.standard_normal((args.batch_size, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.randint(0, 10, args.batch_size)]
    for _ in range(2):
        trainer.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_on_batch(x, y)
    seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({"images_per_sec": args.batch_size / seconds, "onednn": _pywrap_util_port.IsMklEnabled()}))


def measure(args, model, onednn):
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_NUM_INTRAOP_THREADS": str(args.threads),
           "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "LARQ_ESBNN_QUIET": "1"}
    cmd = [sys.executable, __file__, "--child", model, "--steps", str(args.steps),
           "--batch-size", str(args.batch_size)] + ([] if args.teacher else ["--no-teacher"])
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"onednn_ab.py: {model} with TF_ENABLE_ONEDNN_OPTS={onednn} failed:\n{result.stderr[-2000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    if record["onednn"] != (onednn == "1"):
        sys.exit(f"onednn_ab.py: TF_ENABLE_ONEDNN_OPTS={onednn} did not select the kernels it names")
    return record["images_per_sec"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(CIFAR_MODELS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--no-teacher", dest="teacher", action="store_false")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --markdown file")
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.model = args.child
        return child(args)
    for model in args.models:
        if model not in CIFAR_MODELS:
            sys.exit(f"onednn_ab.py: unknown model {model!r}; allowed: {', '.join(CIFAR_MODELS)}")
    for name in ("steps", "rounds", "threads", "batch_size"):
        if getattr(args, name) < 1:
            sys.exit(f"onednn_ab.py: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.markdown and os.path.exists(args.markdown) and not args.overwrite:
        sys.exit(f"onednn_ab.py: {args.markdown} exists; pass --overwrite to replace it")

    import tqdm

    from larq_esbnn import util

    runs = {(m, o): [] for m in args.models for o in ("0", "1")}
    with tqdm.tqdm(total=len(runs) * args.rounds, desc="child processes") as bar:
        for _ in range(args.rounds):
            for model in args.models:
                for onednn in ("0", "1"):
                    runs[model, onednn].append(measure(args, model, onednn))
                    bar.update()
    command = "python benchmarks/onednn_ab.py " + " ".join(sys.argv[1:])
    lines = [
        "# oneDNN kernels against TensorFlow's default CPU kernels: training steps",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {util.cpu_model()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d', time.gmtime())}; "
        f"{args.threads} TF thread(s), batch {args.batch_size}, "
        f"{'with' if args.teacher else 'without'} a resnet20_fp teacher, "
        f"{args.steps} timed steps per child, median of {args.rounds} rounds.",
        "",
        "| model | default kernels, images/s | oneDNN, images/s | oneDNN / default |",
        "|---|---|---|---|",
    ]
    for model in args.models:
        plain, onednn = statistics.median(runs[model, "0"]), statistics.median(runs[model, "1"])
        lines.append(f"| {model} | {plain:.1f} | {onednn:.1f} | {onednn / plain:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        tmp = args.markdown + ".tmp"
        with open(tmp, "w") as f:
            f.write(table)
        os.replace(tmp, args.markdown)


if __name__ == "__main__":
    main()
