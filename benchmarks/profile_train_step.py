"""Where a training step's time goes: a per-op profile of the CIFAR-10 family.

    python benchmarks/profile_train_step.py [MODEL ...] [--steps 5] [--batch-size 128] [--plain]

Runs ``--steps`` training steps of each model (step-2 setting: binary weights and
activations, random 32x32 inputs, the trainer of ``larq-esbnn train``) under the
TensorFlow profiler, reads the host trace (``*.xplane.pb``) and sums the time
of every executed TF op. Prints two tables per model:

- by op type (``Conv2D``, ``FusedBatchNormGradV3``, ``Tile`` ...), with its share
  of all op time;
- by layer class and direction (forward / backward / optimizer), from the op's
  name scope (``<model>/<layer>/...``; backward ops live under ``gradient_tape/``).

Op time is summed over the executor threads, so it can exceed wall time when two
ops run at once; shares are what to read. ``--plain`` profiles the plain Keras
path (``BNNTrainer(fused_training=False)``), the default is the path ``larq-esbnn train`` uses.
"""

import argparse
import collections
import glob
import re
import tempfile

import larq_esbnn  # noqa: F401  (first: selects Keras 2 before TensorFlow loads)
import numpy as np
import tensorflow as tf
from larq_esbnn import models
from larq_esbnn.train.trainer import BNNTrainer
from tensorflow.tsl.profiler.protobuf import xplane_pb2


# name scopes of the fused training path's hand-written gradients (larq_esbnn.layers)
HAND_WRITTEN_GRADIENTS = {
    "rprelu_grad": "RPReLU",
    "learnable_bias_grad": "LearnableBias",
    "approx_sign_grad": "BinaryConv2D",
}


def op_events(logdir):
    """(op name, op type, seconds) of every TF op executed in the trace."""
    path = glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb")[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and not name.startswith(("ThreadpoolListener", "ExecutorState")):
                    op, kind = name.rsplit(":", 1)
                    yield op, kind, event.duration_ps * 1e-12


def layer_of(op, model):
    """(layer class, direction) of an op from its name scope."""
    parts = op.split("/")
    direction = "backward" if parts[0] == "gradient_tape" else "forward"
    for part in parts:  # unique scopes get suffixes: rprelu_grad_3
        layer = HAND_WRITTEN_GRADIENTS.get(re.sub(r"_\d+$", "", part))
        if layer:
            return layer, "backward"
    if parts[0] in ("AdamW", "Adam") or "AdamW" in parts[:2]:
        return "optimizer", "update"
    if model.name in parts:
        i = parts.index(model.name)
        if i + 1 < len(parts):
            try:
                return type(model.get_layer(parts[i + 1])).__name__, direction
            except ValueError:
                pass
    return "other (loss, metrics, trainer)", direction


def profile(name, batch_size, steps, fast):
    model = models.get(name)
    trainer = BNNTrainer(model, fused_training=fast)
    trainer.compile(optimizer=tf.keras.optimizers.AdamW(1e-4))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 32, 32, 3), np.float32)
    y = tf.one_hot(rng.integers(0, 10, batch_size), 10).numpy()
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    trainer.fit(ds, steps_per_epoch=3, verbose=0)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        trainer.fit(ds, steps_per_epoch=steps, verbose=0)
        tf.profiler.experimental.stop()
        events = list(op_events(logdir))
    by_type, by_layer = collections.Counter(), collections.Counter()
    for op, kind, sec in events:
        by_type[kind] += sec
        by_layer[layer_of(op, model)] += sec
    return sum(by_type.values()) / steps, by_type, by_layer


def table(title, counter, total, top):
    print(f"\n{title}\n\n| what | ms / step | share |\n|---|---|---|")
    for key, sec in counter.most_common(top):
        label = " ".join(key) if isinstance(key, tuple) else key
        print(f"| {label} | {1000 * sec:.1f} | {100 * sec / total:.1f} % |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnet20", "es_resnet20", "es_g_resnet20"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--plain", action="store_true", help="profile the plain Keras training path")
    args = parser.parse_args()
    for name in args.models:
        per_step, by_type, by_layer = profile(name, args.batch_size, args.steps, not args.plain)
        total = sum(by_type.values())
        scale = 1 / args.steps
        path = "plain Keras path" if args.plain else "default (fast) path"
        print(f"\n## {name} ({path}): {1000 * per_step:.0f} ms of op time per step, batch {args.batch_size}")
        table("By op type", collections.Counter({k: v * scale for k, v in by_type.items()}), total * scale, args.top)
        table("By layer class", collections.Counter({k: v * scale for k, v in by_layer.items()}), total * scale, args.top)


if __name__ == "__main__":
    main()
