"""Training throughput (images/s) of the CIFAR-10 ResNet-20 family, step 2 setting
(binary weights and activations), same trainer as `larq-esbnn train`.

    python benchmarks/train_throughput.py [--batch-size 128] [--steps 30] [MODEL ...]

Random 32x32 inputs (no data pipeline cost); the first 5 steps (tracing) are not
timed. Prints a table; ratios are relative to the first model.
"""

import argparse
import time

import larq_esbnn  # noqa: F401  (first: selects Keras 2 before TensorFlow loads)
import numpy as np
import tensorflow as tf
from larq_esbnn import models
from larq_esbnn.train.trainer import BNNTrainer


def measure(name, batch_size, steps, warmup=5):
    model = models.get(name)
    trainer = BNNTrainer(model)
    trainer.compile(optimizer=tf.keras.optimizers.AdamW(1e-4))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 32, 32, 3), np.float32)
    y = tf.one_hot(rng.integers(0, 10, batch_size), 10).numpy()
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    trainer.fit(ds, steps_per_epoch=warmup, verbose=0)
    start = time.perf_counter()
    trainer.fit(ds, steps_per_epoch=steps, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnet20", "es_resnet20", "g_resnet20", "es_g_resnet20"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rows.append((name, measure(name, args.batch_size, args.steps)))
        print(f"{name}: {rows[-1][1]:.0f} images/s", flush=True)
    base = rows[0][1]
    print(f"\n| model | images/s (batch {args.batch_size}, {args.steps} steps) | time per epoch vs {rows[0][0]} |")
    print("|---|---|---|")
    for name, ips in rows:
        print(f"| {name} | {ips:.0f} | {base / ips:.2f}x |")


if __name__ == "__main__":
    main()
