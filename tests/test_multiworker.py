"""Multi-worker training for real (issue 16, part 3).

Two worker processes on 127.0.0.1 (free ports) get a ``TF_CONFIG`` each and
run the project's trainer (``larq_esbnn.train.trainer.train``), which picks
``MultiWorkerMirroredStrategy`` from it. They train ``resnet20`` for a few
steps on small synthetic image folders, a different one per worker (each
global batch of 8 is 4 images from each worker), so they end with identical
weights only if every gradient was all-reduced across the processes. Each
worker has its own output folder and cache, as on separate machines.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from test_train import make_folder

WORKER = textwrap.dedent("""
    import json, sys
    import larq_esbnn  # selects Keras 2 before TensorFlow loads
    import tensorflow as tf
    from larq_esbnn.train import trainer
    from larq_esbnn.train.recipe import Recipe, Step

    data, out = sys.argv[1], sys.argv[2]
    strategy = trainer.choose_strategy("auto")  # MultiWorkerMirroredStrategy from TF_CONFIG
    recipe = Recipe(model="resnet20", data=data, batch_size=8, image_size=32, seed=0,
                    steps=[Step(epochs=1, lr=5e-3)], test_limit=8)
    metrics = trainer.train(recipe, out, strategy=strategy)
    prefix = trainer.StateStore(out + "/state").latest["prefix"]
    keys = [k for k, shape in tf.train.list_variables(prefix) if k.startswith("optimizer/") and "iter" in k]
    key = min(keys, key=len)
    steps = int(tf.train.load_variable(prefix, key))  # optimizer steps taken
    print("RESULT " + json.dumps({"multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
                                  "replicas": strategy.num_replicas_in_sync,
                                  "steps": steps, "n": metrics["n"]}), flush=True)
""")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_IMAGES = 3 * 8  # 3 classes x 8 images: 3 steps of global batch 8
# seconds for both workers together; a healthy run on an idle machine takes well under a
# minute (LARQ_ESBNN_MW_TIMEOUT raises it on a busy machine)
TIMEOUT = float(os.environ.get("LARQ_ESBNN_MW_TIMEOUT", 300))


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def read_h5(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_two_workers_end_with_identical_weights(tmp_path):
    # different images on each worker (as two machines with their own shards): identical
    # weights at the end need the cross-process all-reduce of every gradient
    folders = [make_folder(tmp_path / f"imgs{i}", classes=3, train=8, test=3, seed=i) for i in range(2)]
    cluster = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs, logs = [], []
    for index in range(2):
        out = tmp_path / f"worker{index}"
        env = {**os.environ,
               "TF_CONFIG": json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}),
               "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "LARQ_ESBNN_QUIET": "1",
               "LARQ_ESBNN_CACHE": str(tmp_path / f"cache{index}"), "CUDA_VISIBLE_DEVICES": ""}
        log = open(tmp_path / f"worker{index}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(folders[index]), str(out)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    start = time.monotonic()
    try:
        while any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed or time.monotonic() - start > TIMEOUT:
                break  # a crashed worker leaves the other waiting in a collective
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    elapsed = time.monotonic() - start
    outputs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    codes = [p.returncode for p in procs]
    if codes != [0, 0]:
        tails = "\n".join(f"--- worker {i} (exit {c}) ---\n{o[-3000:]}" for i, (c, o) in enumerate(zip(codes, outputs)))
        pytest.fail(f"workers did not both finish within {TIMEOUT} s ({elapsed:.0f} s): exit codes {codes}\n{tails}")
    print(f"\ntwo workers finished in {elapsed:.1f} s")

    results = [json.loads(o.split("RESULT ", 1)[1].splitlines()[0]) for o in outputs]
    for r in results:
        # (the class behind tf.distribute.MultiWorkerMirroredStrategy is named CollectiveAllReduceStrategy)
        assert r == {"multi_worker": True, "replicas": 2,
                     "steps": TRAIN_IMAGES // 8, "n": 8}, r
    a, b = (read_h5(tmp_path / f"worker{i}" / "weights.h5") for i in range(2))
    assert a.keys() == b.keys() and len(a) > 50
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
