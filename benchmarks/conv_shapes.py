"""Why an ES step costs more with the same binary MACs: the binary convs' shapes.

    python benchmarks/conv_shapes.py

Times one 3x3 conv (batch 128, +-1 operands) forward, its filter gradient and its
input gradient for the shapes of resnet20 (C -> C) and es_resnet20 (tau C -> C / tau,
tau = 2: the same MACs), per stage, and for one group of es_g_resnet20; plus the
filter gradient as patches + one matrix product (an alternative formulation, and
its largest difference to the kernel's result). Milliseconds per call, all threads.
"""

import time

import numpy as np
import tensorflow as tf

shapes = [("r20 s1", 32, 16, 16), ("es s1", 32, 32, 8), ("r20 s2", 16, 32, 32), ("es s2", 16, 64, 16),
          ("r20 s3", 8, 64, 64), ("es s3", 8, 128, 32), ("esg s1 (per group)", 32, 32, 4)]
N = 128
def timeit(f, *a, n=5):
    f(*a)
    t = time.perf_counter()
    for _ in range(n): r = f(*a)
    return (time.perf_counter() - t) / n * 1e3
for name, hw, ci, co in shapes:
    x = tf.constant(np.sign(np.random.randn(N, hw, hw, ci)).astype("float32"))
    w = tf.constant(np.sign(np.random.randn(3, 3, ci, co)).astype("float32"))
    g = tf.constant(np.random.randn(N, hw, hw, co).astype("float32"))
    fwd = tf.function(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"))
    bpf = tf.function(lambda x, g: tf.compat.v1.nn.conv2d_backprop_filter(x, [3, 3, ci, co], g, [1,1,1,1], "SAME"))
    bpi = tf.function(lambda w, g: tf.compat.v1.nn.conv2d_backprop_input([N, hw, hw, ci], w, g, [1,1,1,1], "SAME"))
    def patches_filter(x, g):
        p = tf.image.extract_patches(x, [1,3,3,1], [1,1,1,1], [1,1,1,1], "SAME")
        p = tf.reshape(p, [-1, 9 * ci])
        return tf.reshape(tf.matmul(p, tf.reshape(g, [-1, co]), transpose_a=True), [3, 3, ci, co])
    pf = tf.function(patches_filter)
    err = np.abs(pf(x, g).numpy() - bpf(x, g).numpy()).max()
    print(f"{name:20s} fwd {timeit(fwd, x, w):7.1f} ms  bp_filter {timeit(bpf, x, g):7.1f}  bp_input {timeit(bpi, w, g):7.1f}  patches_filter {timeit(pf, x, g):7.1f}  (max diff {err:.2g})", flush=True)
