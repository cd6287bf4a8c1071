"""ReActNet-A and ReActNet-18, with ES (``tau``) and G (``groups``) as arguments.

ReActNet: Liu et al., "ReActNet: Towards Precise Binary Neural Network with
Generalized Activation Functions", ECCV 2020. ``es_reactnet_a`` is
``reactnet_a(tau=2)``, the ES-ReActNet-A of ES-BNN (Shi et al., 2025).
"""

import re

from larq_esbnn import blocks
from larq_esbnn.models.common import build
from larq_esbnn.registry import (
    register_features,
    register_model,
    register_torch_rules,
    register_variant,
)
from larq_esbnn.torch_import import classifier_rule, from_table
from larq_esbnn.weights import register_weights, released

REACTNET_A_CHANNELS = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
RESNET18_WIDTHS = [64, 128, 256, 512]  # four stages of four basic layers


@register_model(
    "reactnet_a", "ReActNet-A: MobileNet-V1 shaped BNN, RSign/RPReLU (ImageNet {top1} % reported)", reported=("69.4", "ReActNet")
)
def reactnet_a(
    *,
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=1000,
    tau=1,
    groups=1,
    pad_value=0.0,
    symmetric=True,
    binary_weights=True,
    bn_momentum=0.9,
    head_channels="all",
    classifier_activation=None,
    name="reactnet_a",
):
    """ReActNet-A (Liu et al. 2020); with ``tau > 1`` it is ES-ReActNet-A.

    Stem: real 3x3 conv stride 2, 3 -> 32, BN (symmetric padding as PyTorch).
    13 ReActNet blocks over ``REACTNET_A_CHANNELS``; head: GAP -> dense.
    Outputs logits unless ``classifier_activation`` is set. ``include_top=False``
    returns the last feature map (7x7x1024*tau*groups at 224).

    ``models.get(name, features_only=True)`` returns the ends of the five MobileNet-V1
    stages, blocks b1, b3, b5, b11 and b13 at strides 2, 4, 8, 16 and 32 (64 to 1024
    channels, times tau * groups).

    Trainable parameters at 224, 1000 classes: 29,343,592 (tau=1, the released
    definition); 30,432,072 for tau=2 (the Rep-ReActNet release): the binary
    kernels keep their size (C_in tau x C_out / tau), the real-valued per-channel
    parameters (BN, biases, PReLU) double and the head reads 2048 features.
    """
    return build(locals(), _reactnet_a_features)


def _reactnet_a_features(x, cfg):
    return blocks.mobilenet_stage(blocks.mobilenet_stem(x, cfg), REACTNET_A_CHANNELS, cfg)


es_reactnet_a = register_variant(
    "es_reactnet_a", reactnet_a, "ES-ReActNet-A: ReActNet-A with expanding-and-shrinking, tau=2 ({top1} % reported)", reported=("71.34", "ES-BNN release"), tau=2
)


@register_model("reactnet_18", "ReActNet-18: Bi-Real ResNet-18 layout with RSign/RPReLU ({top1} % reported)", reported=("65.5", "ReActNet"))
def reactnet_18(
    *,
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=1000,
    tau=1,
    groups=1,
    pad_value=0.0,
    symmetric=True,
    binary_weights=True,
    bn_momentum=0.9,
    head_channels="all",
    classifier_activation=None,
    name="reactnet_18",
):
    """ReActNet-18 (ReAct-ResNet-18); with ``tau > 1`` it is ES-ReActNet-18.

    Stem: real 7x7 conv stride 2, 3 -> 64, BN, 3x3 max pool stride 2 (both padded
    symmetrically as PyTorch). Four stages of 4 basic layers (64, 128, 256, 512),
    stride 2 at the first layer of stages 2-4 with an AvgPool + real 1x1 + BN
    shortcut. Head: GAP -> dense.

    ``models.get(name, features_only=True)`` returns the stem's BN (stride 2, before the
    max pool) and the ends of the four stages, layers l3, l7, l11 and l15 at strides 4,
    8, 16 and 32.

    Trainable parameters (224, 1000 classes): 11,704,424 for tau=1 (released
    definition). With ES the binary kernels keep their size; per-channel
    parameters, the real 1x1 shortcuts (C_in tau x C_out tau: tau^2 larger) and
    the head input (512 tau) grow; the count is pinned in the tests.
    """
    return build(locals(), _reactnet_18_features)


def _reactnet_18_features(x, cfg):
    return blocks.resnet_stages(blocks.resnet18_stem(x, cfg), RESNET18_WIDTHS, 4, cfg)


# The authors' ImageNet checkpoints (downloaded by hand, converted on first use).
REACTNET_CONTAINER = "dict {'epoch', 'state_dict', 'best_top1_acc', 'optimizer'}, keys prefixed 'module.'"
register_weights(
    released("reactnet_a", "https://github.com/liuzechun/ReActNet", "checkpoint.pth.tar",
             "ReActNet (ECCV 2020)", REACTNET_CONTAINER,
             note="the README's model table links the MobileNet (ReActNet-A) file; "
             "mobilenet/2_step2/train.py writes and resumes from checkpoint.pth.tar"),
    released("reactnet_18", "https://github.com/liuzechun/ReActNet", "checkpoint.pth.tar",
             "ReActNet (ECCV 2020)", REACTNET_CONTAINER,
             note="the README's model table links the ResNet-18 file (resnet/2_step2)"),
    released("es_reactnet_a", "https://github.com/imfinethanks/ESBNN", "checkpoint.pth.tar",
             "ES-BNN (Shi et al., 2025)", "as ReActNet: " + REACTNET_CONTAINER,
             note="the ES-ReActNet-A (tau=2) file of the authors' Rep-ReActNet release; the "
             "repository README read for this entry (commit 972eecd) links only BNext-T and "
             "ES-BNext-T, so the ES-ReActNet-A link was not verified"),
)


es_reactnet_18 = register_variant(
    "es_reactnet_18", reactnet_18, "ES-ReActNet-18: ReActNet-18 with expanding-and-shrinking, tau=2 ({top1} % reported)", reported=("68.0", "ES-BNN"), tau=2
)


# ---------------------------------------------------------------- PyTorch tensor names
# How the released checkpoints (ReActNet's mobilenet/ and resnet/ step-2 code; the
# Rep-ReActNet release of ES-BNN for tau = 2) name what our layers hold. The
# ReActNet-A block table is BCDNet-A's too (models/bcdnet.py), whose release
# keeps ReActNet's module names for its convolutional stage.

# block b{i}: Keras layer suffix -> (kind, torch name(s) below "feature.{i}.")
REACTNET_A_BLOCK = {
    "1_move": ("bias", "move11"),
    "conv1": ("conv", "binary_3x3"),
    "bn1": ("bn", "bn1"),
    "rprelu1": ("rprelu", ("move12", "prelu1", "move13")),
    "2_move": ("bias", "move21"),
    "conv2": ("conv", "binary_pw"),
    "bn2": ("bn", "bn2"),
    "conv2a": ("conv", "binary_pw_down1"),
    "conv2b": ("conv", "binary_pw_down2"),
    "bn2a": ("bn", "bn2_1"),
    "bn2b": ("bn", "bn2_2"),
    "rprelu2": ("rprelu", ("move22", "prelu2", "move23")),
}
# layer l{4 s + j}: Keras layer suffix -> (kind, torch name(s) below "layer{s + 1}.{j}.")
REACTNET_18_LAYER = {
    "move": ("bias", "move0"),
    "conv": ("conv", "binary_conv"),
    "bn": ("bn", "bn1"),
    "rprelu": ("rprelu", ("move1", "prelu", "move2")),
    "sc_conv": ("conv", "downsample.1"),
    "sc_bn": ("bn", "downsample.2"),
}
_A_BLOCK_NAME = re.compile(r"^b(\d+)_(.+)$")
_18_LAYER_NAME = re.compile(r"^l(\d+)_(.+)$")


def reactnet_a_torch_name(layer_name, args=None):
    """(kind, torch name(s)) of a ReActNet-A layer in the released checkpoint, or None:
    the stem is ``feature.0``, block ``b{i}`` is ``feature.{i}``, the head ``fc``."""
    stem = {"stem_conv": ("conv", "feature.0.conv1"), "stem_bn": ("bn", "feature.0.bn1")}
    if layer_name in stem:
        return stem[layer_name]
    m = _A_BLOCK_NAME.match(layer_name)
    if m:
        return from_table(REACTNET_A_BLOCK, m.group(2), f"feature.{int(m.group(1))}.")
    return classifier_rule(layer_name)


def reactnet_18_torch_name(layer_name, args=None):
    """(kind, torch name(s)) of a ReActNet-18 layer, or None: torchvision's ResNet
    names (``conv1``, ``bn1``, ``layer{s}.{j}``, ``fc``), 4 layers a stage."""
    stem = {"stem_conv": ("conv", "conv1"), "stem_bn": ("bn", "bn1")}
    if layer_name in stem:
        return stem[layer_name]
    m = _18_LAYER_NAME.match(layer_name)
    if m:
        stage, j = divmod(int(m.group(1)), 4)
        return from_table(REACTNET_18_LAYER, m.group(2), f"layer{stage + 1}.{j}.")
    return classifier_rule(layer_name)


register_torch_rules({"reactnet_a": "ReActNet release (MobileNet, step 2)",
                      "es_reactnet_a": "Rep-ReActNet release (ES, tau=2, step 2)"}, reactnet_a_torch_name)
register_torch_rules({"reactnet_18": "ReActNet release (ResNet-18, step 2)"}, reactnet_18_torch_name)


# Feature maps (features_only=True). ReActNet-A follows MobileNet-V1, whose stages
# are the runs of blocks at one resolution: the last block at strides 2, 4, 8, 16
# and 32 (64, 128, 256, 512, 1024 channels; b1, b3, b5, b11, b13). ReActNet-18 has
# ResNet-18's stem (its BN at stride 2, before the max pool) and four stages of
# four layers (l3, l7, l11, l15 at strides 4-32).


def _reactnet_a_stages(args):
    w = args["tau"] * args["groups"]
    return [(f"b{i}_rprelu2", c * w, 2 ** (down + 1), f"stride {2 ** (down + 1)}: blocks up to b{i}, {c} channels")
            for i, c, down in blocks.width_stage_ends(REACTNET_A_CHANNELS)]


def _reactnet_18_stages(args):
    w = args["tau"] * args["groups"]
    return [("stem_bn", 64, 2, "stem: 7x7/2 conv, BN (before the max pool)")] + [
        (f"l{4 * s + 3}_rprelu", c * w, 2 ** (s + 2), f"stage {s + 1}: layers l{4 * s}-l{4 * s + 3}, {c} channels")
        for s, c in enumerate([64, 128, 256, 512])
    ]


register_features(["reactnet_a", "es_reactnet_a"], _reactnet_a_stages)
register_features(["reactnet_18", "es_reactnet_18"], _reactnet_18_stages)
