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

# The sub-modules load on first use (PEP 562), so that ``import larq_esbnn`` and
# ``larq-esbnn --help`` do not start TensorFlow; ``larq_esbnn.models`` etc. work as before.
_LAZY = {
    "blocks": ("larq_esbnn.blocks", None),
    "layers": ("larq_esbnn.layers", None),
    "models": ("larq_esbnn.models", None),
    "quantizers": ("larq_esbnn.quantizers", None),
    "predict": ("larq_esbnn.inference", "predict"),
    "summary": ("larq_esbnn.report", "summary"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'larq_esbnn' has no attribute {name!r}")
    import importlib

    module_name, attribute = _LAZY[name]
    value = importlib.import_module(module_name)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = ["blocks", "layers", "models", "predict", "quantizers", "summary", "__version__"]
