import os
import pathlib
import random

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import larq_esbnn  # noqa: E402,F401

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
CIFAR10 = pathlib.Path(os.environ.get("LARQ_ESBNN_CIFAR10", SHARED / "datasets" / "cifar10"))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    tf.random.set_seed(0)
    tf.keras.backend.clear_session()
    yield


@pytest.fixture
def cifar10_dir():
    if not (CIFAR10 / "test.tar.gz").exists():
        pytest.skip(f"CIFAR-10 archives not found at {CIFAR10}")
    return CIFAR10
