"""larq-esbnn: ES-BNN and BCDNet binary neural networks for Larq / Keras.

Importing this package selects Keras 2 (tf-keras) behind ``tf.keras`` by setting
``TF_USE_LEGACY_KERAS=1``; larq does not run on Keras 3. The variable only has an
effect before TensorFlow is first imported, so a process that already imported
TensorFlow with Keras 3 gets a clear ImportError instead of a failure deep in larq.
"""

import os
import sys

__version__ = "0.1.0"


def _select_keras_2():
    if "tensorflow" not in sys.modules:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        return
    import tensorflow as tf

    version = getattr(tf.keras, "__version__", "")
    if version.startswith("3"):
        raise ImportError(
            "larq-esbnn needs Keras 2 (tf-keras) behind tf.keras, but TensorFlow was "
            f"already imported with Keras {version}. Set TF_USE_LEGACY_KERAS=1 before "
            "TensorFlow is first imported (e.g. `export TF_USE_LEGACY_KERAS=1`, or "
            "`import larq_esbnn` before `import tensorflow`)."
        )


_select_keras_2()

from larq_esbnn import blocks, layers, models, quantizers  # noqa: E402
from larq_esbnn.inference import predict  # noqa: E402
from larq_esbnn.report import summary  # noqa: E402

__all__ = ["blocks", "layers", "models", "predict", "quantizers", "summary", "__version__"]
