import gc
import os
import pathlib
import random

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import larq_esbnn  # noqa: E402,F401  (first, as a user would: it configures TensorFlow)

# isort: split
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
CIFAR10 = pathlib.Path(os.environ.get("LARQ_ESBNN_CIFAR10", SHARED / "datasets" / "cifar10"))


def _release_traced_graphs():
    """Free what each traced graph kept alive.

    ``tf.custom_gradient`` (larq's quantizers, our sign and shift functions) registers
    one gradient function per call made while tracing a graph (every Keras
    functional build traces its layers), in a process-wide registry that is never
    emptied. Each entry holds its graph, and the graph the variables it captured:
    measured here, every model built kept its weights alive after ``del`` and
    ``clear_session`` (+48 MB per ResNet-18 build, +36 MB per 9.4 M-weight
    QuantConv2D); over the suite one process grew to ~20 GB. Between tests no
    graph built earlier is differentiated again, so the entries can go."""
    from tensorflow.python.framework import ops

    registry = ops._gradient_registry._registry
    for key in [k for k in registry if k.startswith("CustomGradient-")]:
        del registry[key]
    tf.keras.backend.clear_session()
    gc.collect()


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    tf.random.set_seed(0)
    tf.keras.backend.clear_session()
    yield
    _release_traced_graphs()


@pytest.fixture
def cifar10_dir():
    if not (CIFAR10 / "test.tar.gz").exists():
        pytest.skip(f"CIFAR-10 archives not found at {CIFAR10}")
    return CIFAR10


@pytest.fixture
def float64():
    """Keras layers in float64 for exactness checks against a reference."""
    tf.keras.backend.clear_session()
    tf.keras.backend.set_floatx("float64")
    yield
    tf.keras.backend.set_floatx("float32")
