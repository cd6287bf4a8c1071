"""Model factories and the registry: ``get(name, **kwargs)``, ``names(pattern)``."""

from larq_esbnn.models.bcdnet import bcdnet_a, bcdnet_a_18, bcdnet_b, bcdnet_b_18, es_bcdnet_a
from larq_esbnn.models.binaryvit import (
    binaryvit_cifar,
    binaryvit_s,
    es_binaryvit_cifar,
    es_binaryvit_s,
)
from larq_esbnn.models.bnext import bnext_l, bnext_m, bnext_s, bnext_t, es_bnext_t
from larq_esbnn.models.common import transfer_weights
from larq_esbnn.models.mixer import mlp_mixer_s_binary, reactnet_18_mixer
from larq_esbnn.models.reactnet import es_reactnet_18, es_reactnet_a, reactnet_18, reactnet_a
from larq_esbnn.models.resnet20 import es_g_resnet20, es_resnet20, g_resnet20, resnet20, resnet20_fp
from larq_esbnn.registry import entry, feature_info, get, names, register_model, register_variant

__all__ = [
    "binaryvit_cifar", "binaryvit_s", "es_binaryvit_cifar", "es_binaryvit_s",
    "mlp_mixer_s_binary", "reactnet_18_mixer",
    "bcdnet_a", "bcdnet_a_18", "bcdnet_b", "bcdnet_b_18", "es_bcdnet_a",
    "bnext_l", "bnext_m", "bnext_s", "bnext_t", "es_bnext_t",
    "es_reactnet_18", "es_reactnet_a", "reactnet_18", "reactnet_a",
    "es_g_resnet20", "es_resnet20", "g_resnet20", "resnet20", "resnet20_fp",
    "entry", "feature_info", "get", "names", "register_model", "register_variant", "transfer_weights",
]
