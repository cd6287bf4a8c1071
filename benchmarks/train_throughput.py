"""Training throughput (images/s): the zoo on the plain Keras path and on the fused
training path that ``larq-esbnn train`` uses, next to a stock-larq reference.

    python benchmarks/train_throughput.py [--rounds 3] [--steps 20] [--batch-size 128]
        [--large reactnet_a es_reactnet_a bcdnet_a] [--large-batch 16] [--data DIR]
        [--markdown results_train.md] [MODEL ...]

Every row is measured in one process and round-robin (``--rounds`` rounds of
``--steps`` timed steps each, after 5 untimed warm-up steps; the median round is
reported), so load from other processes hits every row alike and the ratios are
comparable. Inputs are random and in memory (no pipeline cost), step-2 setting
(binary weights and activations). A round is timed from the start of its first
step to the end of its last (a Keras callback), not around ``model.fit``: each
``fit`` call here also pays a set-up / tear-down of about 10 s (seen on
2026-11-30: ten 1.1 s steps inside a 20.5 s ``fit``), which a real run pays once
per epoch of 390 steps and which had made the first tables of this benchmark
quantised and meaningless.

Rows:
- ``plain_larq_resnet20``: the reference, a binary ResNet-20 of the same widths
  written with stock larq layers only (``QuantConv2D`` with ste_sign, BN, no RSign /
  RPReLU / symmetric padding) and trained with plain ``model.compile`` +
  ``model.fit`` (no XLA).
- each zoo MODEL twice: ``plain`` = ``BNNTrainer(fused_training=False)`` (plain Keras ops)
  and ``fused`` = ``BNNTrainer()`` (the default training path).
- ``--large`` models at their 224 px input with batch ``--large-batch``.
- with ``--data`` (an image folder, e.g. ../shared/datasets/cifar10), the input
  pipeline alone: augmented, normalised training batches per second.
"""

import argparse
import platform
import statistics
import sys
import time

import larq_esbnn  # noqa: F401  (first: selects Keras 2 before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tqdm
from larq_esbnn import models
from larq_esbnn.train.trainer import BNNTrainer

REFERENCE = "plain_larq_resnet20"


def plain_larq_resnet20():
    """Stock-larq binary ResNet-20 of the same shape, for reference only."""
    import larq as lq

    layers = tf.keras.layers
    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                  use_bias=False, padding="same")
    inputs = tf.keras.Input((32, 32, 3))
    x = layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs))
    for width, stride in [(16, 1)] * 6 + [(32, 2)] + [(32, 1)] * 5 + [(64, 2)] + [(64, 1)] * 5:
        y = layers.BatchNormalization()(lq.layers.QuantConv2D(width, 3, strides=stride, **binary)(x))
        if stride > 1:
            x = layers.AveragePooling2D(stride)(x)
            x = layers.BatchNormalization()(layers.Conv2D(width, 1, use_bias=False)(x))
        x = layers.Add()([y, x])
    outputs = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    return tf.keras.Model(inputs, outputs, name=REFERENCE)


class _StepWindow(tf.keras.callbacks.Callback):
    """Wall time from the first training step's start to the last step's end."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.end = time.perf_counter()


class Row:
    """One model on one training path, ready to time."""

    def __init__(self, name, path, batch_size, warmup=5):
        self.name, self.path, self.batch_size = name, path, batch_size
        print(f"building and warming up {name} ({path})", file=sys.stderr, flush=True)
        if name == REFERENCE:
            self.model = plain_larq_resnet20()
            self.model.compile(optimizer=tf.keras.optimizers.AdamW(1e-4),
                               loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))
            size = 32
        else:
            size = models.entry(name).input_size
            student = models.get(name)
            self.model = BNNTrainer(student, fused_training=(path == "fused"))
            self.model.compile(optimizer=tf.keras.optimizers.AdamW(1e-4))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch_size, size, size, 3), np.float32)
        y = tf.one_hot(rng.integers(0, 10 if size == 32 else 1000, batch_size), 10 if size == 32 else 1000).numpy()
        self.ds = tf.data.Dataset.from_tensors((x, y)).repeat()
        self.size = size
        self.model.fit(self.ds, steps_per_epoch=warmup, verbose=0)
        self.rounds = []

    def time(self, steps):
        window = _StepWindow()
        self.model.fit(self.ds, steps_per_epoch=steps, verbose=0, callbacks=[window])
        self.rounds.append(steps * self.batch_size / (window.end - window.start))

    @property
    def images_per_sec(self):
        return statistics.median(self.rounds)


def pipeline_images_per_sec(data, batch_size, batches=60):
    """Augmented, normalised training batches from ``data`` per second (no model)."""
    from larq_esbnn.train import data as data_lib

    split = data_lib.load(data, "train")
    ds = data_lib.dataset(split, 32, batch_size, True, seed=0, epoch=0)
    it = iter(ds)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnet20", "es_resnet20", "g_resnet20", "es_g_resnet20"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--large", nargs="*", default=[], help="224 px models, e.g. reactnet_a es_reactnet_a bcdnet_a")
    parser.add_argument("--large-batch", type=int, default=16)
    parser.add_argument("--large-steps", type=int, default=3)
    parser.add_argument("--no-cifar", action="store_true",
                        help="skip the 32 px zoo rows (keep the stock-larq reference), e.g. for a --large-only run")
    parser.add_argument("--data", help="image folder for the input-pipeline row")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()

    rows = [Row(REFERENCE, "stock larq, model.fit", args.batch_size)]
    for name in [] if args.no_cifar else args.models:
        rows += [Row(name, path, args.batch_size) for path in ("plain", "fused")]
    large = [Row(name, path, args.large_batch, warmup=2) for name in args.large for path in ("plain", "fused")]
    for r in range(args.rounds):
        for row in tqdm.tqdm(rows + large, desc=f"round {r + 1}/{args.rounds}", unit="row", leave=False):
            row.time(args.large_steps if row in large else args.steps)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{x.name}/{x.path} {x.rounds[-1]:.{0 if x.rounds[-1] >= 10 else 2}f}" for x in rows + large),
              file=sys.stderr, flush=True)

    ref = rows[0].images_per_sec
    by_key = {(x.name, x.path): x.images_per_sec for x in rows + large}
    lines = [
        f"| model | path | input | batch | images/s (median of {args.rounds}) | vs {REFERENCE} | fused vs plain | vs resnet20 (same path) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in rows + large:
        ips = x.images_per_sec
        plain = by_key.get((x.name, "plain"))
        base = by_key.get(("resnet20", x.path))
        lines.append(
            f"| {x.name} | {x.path} | {x.size} | {x.batch_size} | {ips:.{0 if ips >= 10 else 2}f} | "
            f"{ips / ref:.2f}x | {'%.2fx' % (ips / plain) if x.path == 'fused' and plain else '-'} | "
            f"{'%.2fx' % (ips / base) if base and x.size == 32 and x.name != REFERENCE else '-'} |"
        )
    if args.data:
        pipe = pipeline_images_per_sec(args.data, args.batch_size)
        lines.append(f"| input pipeline alone ({args.data}) | augment + normalise | 32 | {args.batch_size} | "
                     f"{pipe:.0f} | - | - | - |")
    command = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {len(tf.config.list_physical_devices('CPU'))} CPU device, " \
              f"TF {tf.__version__}, intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}"
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"# Training throughput\n\nCommand: `{command}`\n\nMachine: {machine}\n\n{text}\n")


if __name__ == "__main__":
    main()
