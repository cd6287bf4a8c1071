"""Training throughput (images/s) of the CIFAR-10 ResNet-20 family, step 2 setting
(binary weights and activations), same trainer as `larq-esbnn train`.

    python benchmarks/train_throughput.py [--batch-size 128] [--steps 30] [MODEL ...]

Random 32x32 inputs (no data pipeline cost); the first 5 steps (tracing) are not
timed. Prints a table; ratios are relative to the first model. The model name
``plain_larq_resnet20`` is a reference written here with nothing but stock larq
layers (``QuantConv2D`` with ste_sign, BN, the same widths and shortcuts, no RSign /
RPReLU / flip padding): it shows what the package's own layers cost.
"""

import argparse
import time

import larq_esbnn  # noqa: F401  (first: selects Keras 2 before TensorFlow loads)
import numpy as np
import tensorflow as tf
from larq_esbnn import models
from larq_esbnn.train.trainer import BNNTrainer


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
    return tf.keras.Model(inputs, outputs, name="plain_larq_resnet20")


def measure(name, batch_size, steps, warmup=5):
    model = plain_larq_resnet20() if name == "plain_larq_resnet20" else models.get(name)
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
