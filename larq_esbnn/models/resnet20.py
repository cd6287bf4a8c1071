"""CIFAR-10 ResNet-20 family of the ES-BNN paper's ablation: baseline, ES, G and ES+G.

``es_resnet20`` = ``resnet20(tau=2)``, ``g_resnet20`` = ``resnet20(groups=2)``,
``es_g_resnet20`` = ``resnet20(tau=2, groups=2)``.
"""

import tensorflow as tf

from larq_esbnn import blocks
from larq_esbnn.models.common import build, check_num_classes
from larq_esbnn.registry import register_features, register_model, register_variant

layers = tf.keras.layers


@register_model("resnet20", "ReActNet-style binary ResNet-20 for 32x32 images (CIFAR-10)", input_size=32)
def resnet20(
    *,
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=10,
    tau=1,
    groups=1,
    pad_value=0.0,
    symmetric=True,
    binary_weights=True,
    bn_momentum=0.9,
    head_channels="all",
    classifier_activation=None,
    name="resnet20",
):
    """Binary ResNet-20: real 3x3 stem 3 -> 16 + BN, three stages (16, 32, 64) of
    6 basic layers (18 binary 3x3 convs), stride 2 at the first layer of stages 2
    and 3 (AvgPool + real 1x1 + BN shortcut), GAP -> dense.

    ``models.get(name, features_only=True)`` returns the stem (its BN, or the tiling of
    it when tau * groups > 1) and the ends of the three stages, layers l5, l11 and l17,
    at strides 1, 1, 2 and 4.

    Trainable parameters (10 classes): the binary 3x3 kernels total
    9 (16*16*6 + 16*32 + 32*32*5 + 32*64 + 64*64*5) = 267,264 whatever tau and
    groups are (ES: C_in tau x C_out / tau; G: g groups of C_in tau x C_out/(tau g));
    everything real-valued scales with the stream width tau*g: per-channel
    parameters linearly, the two 1x1 shortcuts quadratically, the head input
    64 tau g. Counts per variant are pinned in the tests.
    """
    return build(locals(), _resnet20_features, default_size=32, multiple=4, min_size=8)


def _resnet20_features(x, cfg):
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = blocks.stem_tile(cfg.bn("stem_bn")(x), cfg)
    return blocks.resnet_stages(x, [16, 32, 64], 6, cfg)


@register_model("resnet20_fp", "Real-valued ResNet-20 (He et al.), the CIFAR-10 distillation teacher", input_size=32,
                binary=False)
def resnet20_fp(
    *,
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=10,
    width=1,
    bn_momentum=0.9,
    classifier_activation=None,
    name="resnet20_fp",
):
    """Real-valued ResNet-20: 3x3 stem 3 -> 16 w + BN + ReLU, three stages (16, 32,
    64 times ``width``) of 3 basic blocks (two 3x3 convs each), stride 2 at the
    first block of stages 2 and 3 with an AvgPool + 1x1 conv + BN shortcut, GAP ->
    dense. Used as the distillation teacher of the binary ResNet-20 family.

    ``models.get(name, features_only=True)`` returns the stem's ReLU and the ends of the
    three stages, blocks l2, l5 and l8, at strides 1, 1, 2 and 4.

    Trainable parameters at width 1, 10 classes: 3x3 convs 9 (3*16 + 16*16*6 +
    16*32 + 32*32*5 + 32*64 + 64*64*5) = 267,696, shortcuts 16*32 + 32*64 = 2,560,
    BN 2 (16 + 16*6 + 32*7 + 64*7) = 1,568, head 650: 272,474.
    """
    args = dict(locals())
    check_num_classes(name, num_classes)
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"{name}: width must be a positive integer, got {width!r}")

    def features(x, cfg):
        x = layers.Conv2D(16 * width, 3, padding="same", use_bias=False, name="stem_conv")(x)
        x = layers.ReLU(name="stem_relu")(cfg.bn("stem_bn")(x))
        for s, channels in enumerate([16, 32, 64]):
            for j in range(3):
                strides = 2 if (s > 0 and j == 0) else 1
                x = blocks.real_basic_block(x, channels * width, strides, cfg, f"l{3 * s + j}")
        return x

    return build(args, features, default_size=32, multiple=4, min_size=8)


es_resnet20 = register_variant("es_resnet20", resnet20, "ResNet-20 with expanding-and-shrinking, tau=2", 32, tau=2)
g_resnet20 = register_variant("g_resnet20", resnet20, "ResNet-20 with binary group convs, groups=2", 32, groups=2)
es_g_resnet20 = register_variant(
    "es_g_resnet20", resnet20, "ResNet-20 with ES (tau=2) and G (groups=2)", 32, tau=2, groups=2
)


# Feature maps (features_only=True): the stem and the ends of the three stages of
# He et al.'s CIFAR ResNet (16, 32, 64 channels at strides 1, 2, 4).


def _resnet20_stages(args):
    w = args["tau"] * args["groups"]
    return [
        ("stem_tile" if w > 1 else "stem_bn", 16 * w, 1, "stem: 3x3 conv 3 -> 16, BN"),
        ("l5_rprelu", 16 * w, 1, "stage 1: layers l0-l5, 16 channels"),
        ("l11_rprelu", 32 * w, 2, "stage 2: layers l6-l11, 32 channels"),
        ("l17_rprelu", 64 * w, 4, "stage 3: layers l12-l17, 64 channels"),
    ]


def _resnet20_fp_stages(args):
    w = args["width"]
    return [("stem_relu", 16 * w, 1, "stem: 3x3 conv, BN, ReLU")] + [
        (f"l{3 * s + 2}_relu", c * w, 2**s, f"stage {s + 1}: blocks l{3 * s}-l{3 * s + 2}, {c} channels")
        for s, c in enumerate([16, 32, 64])
    ]


register_features(["resnet20", "es_resnet20", "g_resnet20", "es_g_resnet20"], _resnet20_stages)
register_features("resnet20_fp", _resnet20_fp_stages)
