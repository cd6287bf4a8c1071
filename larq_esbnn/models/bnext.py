"""BNext-T/S/M/L and ES-BNext-T, exact to the released code.

BNext: Guo et al., "Join the High Accuracy Club on ImageNet with A Binary Neural
Network Ticket", 2022 (upstream ``src/bnext.py``); ES-BNext: the ES-BNN release
``src/bnext_rep_ops.py`` (Shi et al., 2025).

``es_bnext_t`` is ``bnext_t(tau=2)`` (the ES-BNN release ``bnext_rep_ops.py``,
``rep_beta=2``). Blocks are :func:`larq_esbnn.blocks.bnext_stages`.

Parameter counts (224, 1000 classes) equal PyTorch's ``parameters()`` of the
released definitions, which include the PReLUs the release creates and never
calls (``activation1`` of every FFN unit and the stem's ``prelu``): they are
kept as trainable no-op :class:`larq_esbnn.layers.UnusedWeight` weights that
never receive a gradient (``unused_weights=False`` drops them). Keras counts
them as *trainable*, as PyTorch does, so ``trainable == released``:

=========  ============  ===================  ===============
model      trainable     unused PReLU weights  non-trainable
=========  ============  ===================  ===============
bnext_t    30,862,236    8,960                 see tests
es_bnext_t 30,943,490    17,920
bnext_s    68,594,614
bnext_m    134,501,974
bnext_l    326,546,640
=========  ============  ===================  ===============

The non-trainable weights are the BN moving statistics (PyTorch buffers) and
one temperature scalar per binary conv (also a buffer in the release).
"""

import re

import tensorflow as tf

from larq_esbnn import blocks
from larq_esbnn.layers import ChannelSplit, UnusedWeight
from larq_esbnn.models.common import block_config, check_num_classes, finish, model_input
from larq_esbnn.registry import register_features, register_torch_rules, register_variant
from larq_esbnn.torch_import import classifier_rule, under
from larq_esbnn.weights import register_weights, released

layers = tf.keras.layers


def _widths(stem, blocks_per_width):
    """Channel list of the release: stem, then ``n`` blocks at each doubling width."""
    out = [stem]
    width = 2 * stem
    for n in blocks_per_width:
        out += [width] * n
        width *= 2
    return out


BNEXT_CHANNELS = {
    # size: stem width, then one entry per block (the release's stage_out_channel lists)
    "tiny": _widths(32, [1, 2, 2, 6, 2]),
    "small": _widths(48, [1, 2, 2, 6, 2]),
    "middle": _widths(48, [1, 4, 4, 8, 4]),
    "large": _widths(64, [1, 4, 4, 16, 4]),
}


def bnext(
    *,
    size="tiny",
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=1000,
    tau=1,
    pad_value=0.0,
    symmetric=True,
    binary_weights=True,
    bn_momentum=0.9,
    temperature=0.0,
    stem_strides=2,
    unused_weights=True,
    classifier_activation=None,
    name="bnext",
):
    r"""BNext (Guo et al. 2022) of ``size`` tiny / small / middle / large; ES-BNext with ``tau > 1``.

    Stem: real 3x3 conv stride ``stem_strides`` (PyTorch padding 1), 3 -> C_0, no
    bias, then (ES: tiled tau times) BN, *no activation*. Blocks: see
    :func:`larq_esbnn.blocks.bnext_stages` (13 for tiny / small, 21 for middle,
    29 for large). Head: the first C_last channels (all of them unless tau > 1,
    as in the ES release) -> PReLU -> global average pool -> dense.

    Binary convs: HardSign input (``SteSign(clip_value=1.5)``) and kernel
    \(\mathrm{sign}(W)\) once the per-conv temperature T < 1e-7, else
    \(\mathrm{clip}(W/T, -1, 1)\); no scale factor. ``temperature`` is the
    initial T of every binary conv: 0 (default) builds the binary network
    (a trained BNext); training starts at 1.0 and anneals it
    (:class:`larq_esbnn.train.trainer.WeightTemperatureSchedule`).

    Arguments beyond the keras.applications ones: ``tau`` (ES factor; must
    divide C/8 of every width: 1, 2 or 4 for tiny), ``pad_value`` / ``symmetric``
    (binary conv padding, see BinaryConv2D), ``binary_weights`` (False: real
    latent weights, binary activations), ``stem_strides`` (the release uses 1
    when ``num_classes != 1000``; the torch importer follows that rule),
    ``unused_weights`` (keep the release's unused PReLUs, see the module doc).

    ``models.get(name, features_only=True)`` returns the last block of each width: b1,
    b3, b5, b11 and b13 (tiny, small), b1, b5, b9, b17 and b21 (middle), b1, b5, b9, b25
    and b29 (large), at strides 2, 4, 8, 16 and 32 (half of each with
    ``stem_strides=1``).

    Trainable parameters of tiny at 224 / 1000 classes, derived: binary convs
    \(\sum k^2 C^2\) = 28,253,184; per unit \(C\) move + \(4C\) BN + \(2C\)
    PReLU + \(C\) lambda + SE \(C^2/4 + C/8 + C\); stem 864 + 64 + 32 (unused
    PReLU); head 1024 + 1,025,000 -- total 30,862,236. ES (tau = 2) keeps the
    binary and SE kernels (tau C x C/tau), doubles every per-channel vector and
    shrinks the SE biases: 30,943,490.
    """
    args = dict(locals())
    if size not in BNEXT_CHANNELS:
        raise ValueError(f"{name}: size must be one of {', '.join(BNEXT_CHANNELS)}, got {size!r}")
    if stem_strides not in (1, 2):
        raise ValueError(f"{name}: stem_strides must be 1 or 2, got {stem_strides!r}")
    check_num_classes(name, num_classes)
    channels = BNEXT_CHANNELS[size]
    cfg = block_config(args)
    for c in set(channels[1:]):
        if c % (8 * tau):
            raise ValueError(
                f"{name}: tau={tau} must divide C/8 of every width (SE and binary convs shrink by tau); "
                f"width {c} gives C/8 = {c // 8}"
            )
    multiple = 16 * stem_strides
    x, inputs = model_input(name, input_shape, input_tensor, 224, multiple, multiple)
    x = layers.ZeroPadding2D(1, name="stem_pad")(x)
    x = layers.Conv2D(channels[0], 3, strides=stem_strides, use_bias=False, name="stem_conv")(x)
    x = blocks.stem_tile(x, cfg)
    x = cfg.bn("stem_bn")(x)
    if unused_weights:
        # the release's firstconv3x3.prelu = nn.PReLU(C, C): initial value C, never called
        x = UnusedWeight(float(x.shape[-1]), name="stem_prelu")(x)
    x = blocks.bnext_stages(x, channels, cfg, temperature=temperature, unused_weights=unused_weights)
    if include_top:
        if tau > 1:
            x = ChannelSplit(tau, name="head_first_copy")(x)[0]
        x = layers.PReLU(alpha_initializer=tf.keras.initializers.Constant(0.25), shared_axes=[1, 2],
                         name="head_prelu")(x)
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
        x = layers.Dense(num_classes, name="head_fc")(x)
        if classifier_activation:
            x = layers.Activation(classifier_activation, name="predictions")(x)
    return finish(inputs, x, name, weights)


bnext_t = register_variant(
    "bnext_t", bnext,
    "BNext-T: BNN with ELM attention and information recoupling (ImageNet {top1} % reported)", reported=("72.4", "BNext"),
    size="tiny",
)
bnext_s = register_variant("bnext_s", bnext, "BNext-S: BNext-T at 1.5x width (ImageNet {top1} % reported)", reported=("76.1", "BNext"), size="small")
bnext_m = register_variant(
    "bnext_m", bnext, "BNext-M: 1.5x width, blocks 1/4/4/8/4 (ImageNet {top1} % reported)", reported=("78.3", "BNext"), size="middle"
)
bnext_l = register_variant(
    "bnext_l", bnext, "BNext-L: 2x width, blocks 1/4/4/16/4 (ImageNet {top1} % reported)", reported=("80.57", "BNext"), size="large"
)
es_bnext_t = register_variant(
    "es_bnext_t", bnext,
    "ES-BNext-T: BNext-T with expanding-and-shrinking, tau=2 (ImageNet {top1} % reported)", reported=("75.2", "ES-BNN"),
    size="tiny", tau=2,
)

# The authors' ImageNet checkpoints (downloaded by hand, converted on first use).
BNEXT_CONTAINER = "dict {'epoch', 'state_dict', 'best_top1_acc', 'optimizer', ...}, keys prefixed 'module.'"
register_weights(
    released("bnext_t", "https://github.com/imfinethanks/ESBNN", "the 'BNext-T' file",
             "ES-BNN README (BNext-T)", BNEXT_CONTAINER,
             link="https://drive.google.com/file/d/1CJ0XOEhoHuNe-tDYJaAOd1j4YyNXuyas/view?usp=sharing"),
    released("es_bnext_t", "https://github.com/imfinethanks/ESBNN", "the 'ES-BNext-T' file",
             "ES-BNN README (ES-BNext-T)", BNEXT_CONTAINER,
             link="https://pan.seu.edu.cn:443/link/F084D724533B054E64ED1FE9B8CC1459"),
)


# ---------------------------------------------------------------- PyTorch tensor names
# ``feature.{i}.Attention`` (the 3x3 unit, also when it is an FFN_3x3),
# ``.FFN`` / ``.FFN_1`` / ``.FFN_2`` are our ``b{i}_u3_*``, ``b{i}_ffn*_*``. In a unit:
# ``move`` -> ``_move``, ``binary_conv`` -> ``_conv`` (kernel and ``temperature``),
# ``norm1/2`` -> ``_bn1/2``, ``activation1/2`` -> ``_prelu1/2``, ``scale`` ->
# ``_recouple`` (lambda; clamped to [0, 1] for the FFN_1x1 units, whose released
# forward clamps it in eval too), ``se.se.1`` / ``se.se.3`` (ES: ``se.se.4``, a tile
# module sits at index 3) -> ``_se1`` / ``_se2``. The stem's and the FFNs' unused
# PReLUs are :class:`larq_esbnn.layers.UnusedWeight`; ``prelu`` is ``head_prelu``.
# HardSign's ``binary_activation.temperature`` changes no output and is read but not
# stored.
_BNEXT_LAYER_NAME = re.compile(r"^b(\d+)_(u3|ffn|ffn1|ffn2)_(.+)$")
BNEXT_UNITS = {"u3": "Attention", "ffn": "FFN", "ffn1": "FFN_1", "ffn2": "FFN_2"}
BNEXT_UNIT = {
    "move": ("bias", "move"),
    "conv": ("temperature_conv", "binary_conv"),
    "bn1": ("bn", "norm1"),
    "bn2": ("bn", "norm2"),
    "prelu1": ("prelu", "activation1"),
    "prelu2": ("prelu", "activation2"),
    "recouple": ("scale", "scale"),
    "se1": ("conv_bias", "se.se.1"),
    "se2": ("conv_bias", ("se.se.3", "se.se.4")),
}
_BNEXT_FIXED = {
    "stem_conv": ("conv", "feature.0.conv1"),
    "stem_bn": ("bn", "feature.0.bn1"),
    "stem_prelu": ("prelu", "feature.0.prelu"),
    "head_prelu": ("prelu", "prelu"),
}


def bnext_torch_name(layer_name, args=None):
    """(kind, torch name(s)) of a BNext / ES-BNext layer in the released checkpoint, or None."""
    if layer_name in _BNEXT_FIXED:
        return _BNEXT_FIXED[layer_name]
    m = _BNEXT_LAYER_NAME.match(layer_name)
    if not m:
        return classifier_rule(layer_name)
    if m.group(3) not in BNEXT_UNIT:
        return None
    kind, rel = BNEXT_UNIT[m.group(3)]
    if kind == "scale" and m.group(2) != "u3":
        kind = "scale_clamped"  # FFN_1x1 clamps lambda to [0, 1] in eval too; the 3x3 units do not
    prefix = f"feature.{int(m.group(1))}.{BNEXT_UNITS[m.group(2)]}."
    return kind, under(prefix, rel)


def bnext_release_args(kwargs):
    """The release builds its stem with stride 1 whenever ``num_classes != 1000``."""
    if kwargs.get("num_classes", 1000) != 1000:
        kwargs = {"stem_strides": 1, **kwargs}
    return kwargs


register_torch_rules({"bnext_t": "BNext release (src/bnext.py, size tiny)",
                      "es_bnext_t": "ES-BNN release (src/bnext_rep_ops.py, rep_beta=2)"},
                     bnext_torch_name, bnext_release_args)


# Feature maps (features_only=True): BNext keeps ReActNet-A's MobileNet-V1 layout, so
# its stages are the runs of blocks at one width, ending at strides 2-32 (with the
# default stem stride 2) at the last block of each width (its add, or the concat of
# the two 1x1 units where the width doubles).


def _bnext_stages(args):
    channels = BNEXT_CHANNELS[args["size"]]
    out = []
    for i, c, down in blocks.width_stage_ends(channels):
        layer = f"b{i}_concat" if channels[i] != channels[i - 1] else f"b{i}_ffn_add"
        stride = args["stem_strides"] * 2**down
        out.append((layer, c * args["tau"], stride, f"stride {stride}: blocks up to b{i}, {c} channels"))
    return out


register_features(["bnext_t", "bnext_s", "bnext_m", "bnext_l", "es_bnext_t"], _bnext_stages)
