"""Time to the first training step (tracing the step function) with the stock
tf.keras AdamW and with the trainer's FusedAdamW, and the loss after a few steps
with each (they should agree to float rounding).

    python benchmarks/trace_time.py [MODEL ...] [--steps 4]

Prints a table of CPU seconds (process time, which a busy machine does not
inflate much) and wall seconds of the first ``train_on_batch``. Each
(model, optimizer) pair runs in a fresh subprocess so that nothing traced before
is reused.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tensorflow as tf
from larq_esbnn import models
from larq_esbnn.train import trainer as T
name, kind, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
tf.keras.utils.set_random_seed(0)
model = models.get(name, input_shape=(32, 32, 3), num_classes=10)
wrapper = T.BNNTrainer(model)
cls = T.FusedAdamW if kind == "FusedAdamW" else tf.keras.optimizers.AdamW
opt = cls(learning_rate=T.WarmupCosine(1e-3, 100, 10), weight_decay=1e-2)
opt.exclude_from_weight_decay(var_names=T.NO_DECAY)
wrapper.compile(optimizer=opt)
x = np.random.RandomState(0).randn(8, 32, 32, 3).astype("float32")
y = tf.one_hot(np.arange(8) % 10, 10)
cpu, wall = time.process_time(), time.time()
wrapper.train_on_batch(x, y)
cpu, wall = time.process_time() - cpu, time.time() - wall
for _ in range(steps - 1):
    loss = wrapper.train_on_batch(x, y, return_dict=True)["loss"]
print(json.dumps({"cpu": cpu, "wall": wall, "loss": float(loss), "variables": len(model.trainable_variables)}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnet20", "es_resnet20", "binaryvit_cifar"])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}
    print("| model | trainable variables | optimizer | first step CPU (s) | first step wall (s) | "
          f"loss after {args.steps} steps |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for kind in ("AdamW", "FusedAdamW"):
            out = subprocess.run([sys.executable, "-c", CHILD, name, kind, str(args.steps)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {name} | {r['variables']} | {kind} | {r['cpu']:.1f} | {r['wall']:.1f} | {r['loss']:.7f} |",
                  flush=True)


if __name__ == "__main__":
    main()
