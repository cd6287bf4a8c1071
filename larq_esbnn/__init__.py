"""larq-esbnn: ES-BNN and BCDNet binary neural networks for Larq / Keras.

Importing this package selects Keras 2 (tf-keras) behind ``tf.keras`` by setting
``TF_USE_LEGACY_KERAS=1``; larq does not run on Keras 3. The variable only has an
effect before TensorFlow is first imported, so a process that already imported
TensorFlow with Keras 3 gets a clear ImportError instead of a failure deep in larq.

It also turns on TensorFlow's oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS=1``) unless the
variable is already set. TensorFlow enables them by itself only on CPUs with AVX-512
or AMX; on an AVX2-only CPU (AMD EPYC, 2026-12-03, one thread, batch 128, with the
teacher) they made a CIFAR-10 training step 1.6x faster for ``resnet20`` and 1.7x for
``es_resnet20`` (``benchmarks/onednn.md``). Their float32 results differ from the
default kernels' in the last bits (another order of summation), as any two CPUs' do.
``TF_ENABLE_ONEDNN_OPTS=0`` keeps TensorFlow's default kernels.
"""

import os
import sys

__version__ = "0.1.0"


def _configure_tensorflow():
    if "tensorflow" not in sys.modules:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
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


_configure_tensorflow()

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
