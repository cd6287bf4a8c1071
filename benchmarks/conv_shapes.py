"""Why an ES step costs more with the same binary MACs: the binary convs' shapes.

    python benchmarks/conv_shapes.py

Times one 3x3 conv (batch 128, +-1 operands) forward, its filter gradient and its
input gradient for the shapes of resnet20 (C -> C) and es_resnet20 (tau C -> C / tau,
tau = 2: the same MACs), per stage, and for one group of es_g_resnet20; plus the
filter gradient as patches + one matrix product (an alternative formulation, and
its largest difference to the kernel's result). Milliseconds per call, all threads.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import larq_esbnn  # noqa: E402,F401  (first: the kernels the package selects, oneDNN unless TF_ENABLE_ONEDNN_OPTS is set)

# isort: split
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SHAPES = [("resnet20 stage 1", 32, 16, 16), ("es_resnet20 stage 1", 32, 32, 8),
          ("resnet20 stage 2", 16, 32, 32), ("es_resnet20 stage 2", 16, 64, 16),
          ("resnet20 stage 3", 8, 64, 64), ("es_resnet20 stage 3", 8, 128, 32),
          ("es_g_resnet20 stage 1, one group", 32, 32, 4)]
BATCH = 128
STRIDES = [1, 1, 1, 1]


def milliseconds(fn, *args, n=5):
    fn(*args)
    start = time.perf_counter()
    for _ in range(n):
        fn(*args)
    return (time.perf_counter() - start) / n * 1e3


def timings(hw, ci, co):
    rng = np.random.default_rng(0)
    x = tf.constant(np.sign(rng.standard_normal((BATCH, hw, hw, ci))).astype("float32"))
    w = tf.constant(np.sign(rng.standard_normal((3, 3, ci, co))).astype("float32"))
    g = tf.constant(rng.standard_normal((BATCH, hw, hw, co)).astype("float32"))
    forward = tf.function(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"))
    filter_grad = tf.function(
        lambda x, g: tf.compat.v1.nn.conv2d_backprop_filter(x, [3, 3, ci, co], g, STRIDES, "SAME"))
    input_grad = tf.function(
        lambda w, g: tf.compat.v1.nn.conv2d_backprop_input([BATCH, hw, hw, ci], w, g, STRIDES, "SAME"))

    @tf.function
    def patches_filter_grad(x, g):
        p = tf.image.extract_patches(x, [1, 3, 3, 1], STRIDES, STRIDES, "SAME")
        p = tf.reshape(p, [-1, 9 * ci])
        return tf.reshape(tf.matmul(p, tf.reshape(g, [-1, co]), transpose_a=True), [3, 3, ci, co])

    diff = np.abs(patches_filter_grad(x, g).numpy() - filter_grad(x, g).numpy()).max()
    return (milliseconds(forward, x, w), milliseconds(filter_grad, x, g), milliseconds(input_grad, w, g),
            milliseconds(patches_filter_grad, x, g), diff)


def main():
    print("| 3x3 conv | forward | filter gradient | input gradient | patches + matmul | max diff |")
    print("|---|---|---|---|---|---|")
    for name, hw, ci, co in SHAPES:
        fwd, fgrad, igrad, patches, diff = timings(hw, ci, co)
        print(f"| {name}, {ci} -> {co} | {fwd:.1f} | {fgrad:.1f} | {igrad:.1f} | {patches:.1f} | {diff:.2g} |",
              flush=True)


if __name__ == "__main__":
    main()
