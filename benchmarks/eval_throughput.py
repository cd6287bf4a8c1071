"""Inference images/s of the CIFAR-10 family with the shipped weights (the cost of
``larq-esbnn evaluate`` and of the per-epoch test pass of ``larq-esbnn train``).

    python benchmarks/eval_throughput.py [MODEL ...] [--batch-size 32] [--repeats 3] [--threads 1]

Times ``model(x, training=False)`` in a ``tf.function`` on one random batch
(first call excluded: tracing), ``--repeats`` calls, and prints images/s and the
time the 10,000 CIFAR-10 test images take. Set the thread count before
TensorFlow starts (``--threads``, default 1: one pytest-xdist worker's share of
this 2-core machine).
"""

import argparse
import os
import time

DEFAULT = ["resnet20", "es_resnet20", "g_resnet20", "es_g_resnet20", "resnet20_fp"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=DEFAULT)
    parser.add_argument("--batch-size", type=int, default=32)  # trainer.INFERENCE_BATCH
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(args.threads)

    import larq_esbnn  # noqa: F401  (first: Keras 2 and oneDNN, before TensorFlow loads)

    # isort: split
    import numpy as np
    import tensorflow as tf

    from larq_esbnn import models

    print("| model | images/s | 10,000 images (s) |\n|---|---|---|")
    for name in args.models:
        model = models.get(name, weights="cifar10")
        x = tf.constant(np.random.default_rng(0).random((args.batch_size, 32, 32, 3), dtype=np.float32))
        predict = tf.function(lambda batch, m=model: m(batch, training=False))
        predict(x).numpy()
        start = time.perf_counter()
        for _ in range(args.repeats):
            predict(x).numpy()
        seconds = (time.perf_counter() - start) / args.repeats
        rate = args.batch_size / seconds
        print(f"| {name} | {rate:.0f} | {10000 / rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
