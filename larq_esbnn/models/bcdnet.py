"""BCDNet-A / -B (MobileNet backbone) and their ResNet-18 variants; ES on BCDNet.

Xing et al., "Towards Accurate Binary Neural Networks via Modeling Contextual
Dependencies", ECCV 2022. BCDNet-A = ReActNet-A on a shorter channel list + a binary MLP
stage of long-short range shift blocks at 7x7; BCDNet-B adds input-dependent
(contextual) thresholds to every binary conv of the convolutional stage.
"""

import dataclasses
import re

from larq_esbnn import blocks
from larq_esbnn.models.common import build
from larq_esbnn.models.reactnet import RESNET18_WIDTHS, reactnet_a_torch_name
from larq_esbnn.registry import (
    register_features,
    register_model,
    register_torch_rules,
    register_variant,
)
from larq_esbnn.torch_import import from_table
from larq_esbnn.weights import register_weights, released

BCDNET_A_CHANNELS = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 1024]


@register_model("bcdnet_a", "BCDNet-A: ReActNet-A backbone + long-short range binary MLP stage ({top1} % reported)", reported=("71.8", "BCDNet"))
def bcdnet_a(
    *,
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=1000,
    tau=1,
    groups=1,
    dynamic=False,
    ratio=4,
    shift_padding="circular",
    long_shift=None,
    mlp_repeats=3,
    shift_blocks=3,
    point_blocks=1,
    heads=2,
    pad_value=0.0,
    symmetric=True,
    binary_weights=True,
    bn_momentum=0.9,
    head_channels="all",
    classifier_activation=None,
    name="bcdnet_a",
):
    """BCDNet-A (Xing et al., ECCV 2022); ``dynamic=True`` gives BCDNet-B.

    Stem as ReActNet-A, 10 ReActNet blocks over ``BCDNET_A_CHANNELS`` (stride 2
    where the width changes), then ``mlp_repeats`` x [``shift_blocks`` shift
    blocks + ``point_blocks`` point blocks] at 1024 x 7 x 7 (long shift
    ``H // 2`` = 3 at 224 unless ``long_shift``), GAP, two dense heads
    (classification and distillation) averaged; ``heads=1`` keeps one.

    ``models.get(name, features_only=True)`` returns the ReActNet-A stage ends b1, b3,
    b5 and b9 at strides 2, 4, 8 and 16, then the last stage (block b10 and the binary
    MLP stage, ending at its last block) at stride 32.

    Trainable parameters (224, 1000 classes, two heads): 46,146,384 for tau=1
    (the released definition). ``dynamic=True`` adds per conv-stage sign
    ``C_in^2/r + C_in/r`` (W1, b1) + ``C_in^2/r + C_in`` (W2, b2) +
    ``C_out C_in/r + C_out`` (W3, b3). ``tau=2`` (es_bcdnet_a, a new combination)
    keeps every binary kernel's size and doubles the real-valued per-channel
    parameters and the head inputs.
    """
    args = dict(locals())

    def features(x, cfg):
        x = blocks.mobilenet_stage(blocks.mobilenet_stem(x, cfg), BCDNET_A_CHANNELS, cfg)
        return _mlp_stage(x, cfg, args)

    return build(args, features)


def _mlp_stage(x, cfg, args):
    """The binary MLP stage, without contextual thresholds (BCDNet-B puts them on
    the convolutional stage only)."""
    return blocks.mlp_stage(x, dataclasses.replace(cfg, dynamic=False), args["mlp_repeats"],
                            args["shift_blocks"], args["point_blocks"], "mlp", args["long_shift"])


# The authors' ImageNet checkpoint (downloaded by hand, converted on first use).
register_weights(
    released("bcdnet_a", "https://github.com/Sense-GVT/BCDNet", "the 'Step2: BCDNet-A' file",
             "BCDNet (ECCV 2022)", "dict {'model', 'optimizer', 'last_iter'}, keys prefixed 'module.'",
             link="https://drive.google.com/file/d/12jL6SzBppXJry0fLq0AzhY1dYFVGyfp5/view?usp=sharing",
             note="step 2 (binary weights and activations); the README also links step 1"),
)


# ---------------------------------------------------------------- PyTorch tensor names
# The release keeps ReActNet-A's names for the stem, the convolutional blocks and
# the heads (fc, fc_dist). MLP block mlp{j} is ``mlp_layer.{r}.mlp_layer.{k}`` with
# ``j = r * per_repeat + k`` (per_repeat = shift_blocks + point_blocks, 4 as released).
#
# An ASSUMPTION, not checked against trained weights: in the release block,
# ``binary_conv`` acts on the unshifted tensor, ``binary_conv1`` on the short-range
# (1) shift and ``binary_conv2`` on the long-range shift; they map to our
# ``mlp{j}_pw``, ``mlp{j}_short`` and ``mlp{j}_long``. If a converted BCDNet-A
# loses accuracy, swapping short / long is the first thing to try.
BCDNET_MLP_BLOCK = {
    "move": ("bias", "move0"),
    "pw": ("conv", "binary_conv"),
    "short": ("conv", "binary_conv1"),
    "long": ("conv", "binary_conv2"),
    "bn": ("bn", "bn1"),
    "rprelu": ("rprelu", ("move1", "prelu", "move2")),
}
_MLP_NAME = re.compile(r"^mlp(\d+)_(.+)$")


def bcdnet_a_torch_name(layer_name, args):
    """(kind, torch name(s)) of a BCDNet-A layer in the released checkpoint, or None;
    ``args`` are the model's arguments (its MLP blocks per repeat)."""
    m = _MLP_NAME.match(layer_name)
    if m:
        r, k = divmod(int(m.group(1)), args["shift_blocks"] + args["point_blocks"])
        return from_table(BCDNET_MLP_BLOCK, m.group(2), f"mlp_layer.{r}.mlp_layer.{k}.")
    return reactnet_a_torch_name(layer_name)


register_torch_rules({"bcdnet_a": "BCDNet release (step 2)"}, bcdnet_a_torch_name)


bcdnet_b = register_variant(
    "bcdnet_b", bcdnet_a, "BCDNet-B: BCDNet-A + dynamic contextual thresholds, r=4", dynamic=True
)
es_bcdnet_a = register_variant(
    "es_bcdnet_a", bcdnet_a, "ES-BCDNet-A: BCDNet-A with expanding-and-shrinking, tau=2 (new combination, no paper figure)", tau=2
)


@register_model("bcdnet_a_18", "BCDNet-A on ReActNet-18: last 3 layers of stage 4 -> binary MLP blocks ({top1} % reported)", reported=("66.9", "BCDNet"))
def bcdnet_a_18(
    *,
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=1000,
    tau=1,
    groups=1,
    dynamic=False,
    ratio=4,
    shift_padding="circular",
    long_shift=None,
    mlp_repeats=3,
    shift_blocks=3,
    point_blocks=1,
    heads=2,
    pad_value=0.0,
    symmetric=True,
    binary_weights=True,
    bn_momentum=0.9,
    head_channels="all",
    classifier_activation=None,
    name="bcdnet_a_18",
):
    """BCDNet on ReActNet-18 (*inferred*: the BCDNet paper, Xing et al., ECCV 2022,
    reports ResNet-18 variants but released no code for them).

    ReActNet-18 up to the downsampling layer of stage 4, then the MLP stage at
    512 x 7 x 7 (default 3 x [3 shift + 1 point], as BCDNet-A: 9 MLP blocks
    replace the last three conv layers), GAP and two heads (``heads``).
    ``dynamic=True`` (bcdnet_b_18) adds contextual thresholds to the conv layers.

    ``models.get(name, features_only=True)`` returns ReActNet-18's stem BN (stride 2)
    and stage ends l3, l7 and l11 (strides 4, 8, 16), then stage 4 (layer l12 and the
    MLP stage, ending at its last block) at stride 32.

    Trainable parameters: ReActNet-18's 11,704,424 minus the three removed layers
    (3 x (9*512*512 + 4*512) = 7,083,008) plus 12 MLP blocks (shift block:
    3*512*512 + 4*512; point block: 512*512 + 4*512), plus 513,000 for the
    second head (pinned in the tests).
    """
    args = dict(locals())

    def features(x, cfg):
        x = blocks.resnet_stages(blocks.resnet18_stem(x, cfg), RESNET18_WIDTHS, 4, cfg, skip_last=3)
        return _mlp_stage(x, cfg, args)

    return build(args, features)


bcdnet_b_18 = register_variant(
    "bcdnet_b_18", bcdnet_a_18, "BCDNet-B on ReActNet-18: + dynamic contextual thresholds ({top1} % reported)", reported=("67.9", "BCDNet"), dynamic=True
)


# Feature maps (features_only=True). BCDNet-A: the ReActNet-A stages at strides 2-16
# (b1, b3, b5, b9), then the last stage = block b10 (stride 2, 512 -> 1024) and the
# binary MLP stage, ending at its last block. The ResNet-18 variants: ReActNet-18's
# stem and stages 1-3, then stage 4 = layer l12 and the MLP stage.


def _mlp_end(args, conv_end):
    n = args["mlp_repeats"] * (args["shift_blocks"] + args["point_blocks"])
    return f"mlp{n - 1}_rprelu" if n else conv_end


def _bcdnet_a_stages(args):
    w = args["tau"] * args["groups"]
    ends = blocks.width_stage_ends(BCDNET_A_CHANNELS)
    out = [(f"b{i}_rprelu2", c * w, 2 ** (down + 1), f"stride {2 ** (down + 1)}: blocks up to b{i}, {c} channels")
           for i, c, down in ends]
    i, c, down = ends[-1]
    out[-1] = (_mlp_end(args, f"b{i}_rprelu2"), c * w, 2 ** (down + 1),
               f"last stage: block b{i} ({c} channels, stride 2) and the binary MLP stage")
    return out


def _bcdnet_a_18_stages(args):
    w = args["tau"] * args["groups"]
    return [("stem_bn", 64, 2, "stem: 7x7/2 conv, BN (before the max pool)")] + [
        (f"l{4 * s + 3}_rprelu", c * w, 2 ** (s + 2), f"stage {s + 1}: layers l{4 * s}-l{4 * s + 3}, {c} channels")
        for s, c in enumerate([64, 128, 256])
    ] + [(_mlp_end(args, "l12_rprelu"), 512 * w, 32, "stage 4: layer l12 (stride 2, 512 channels) and the binary MLP stage")]


register_features(["bcdnet_a", "bcdnet_b", "es_bcdnet_a"], _bcdnet_a_stages)
register_features(["bcdnet_a_18", "bcdnet_b_18"], _bcdnet_a_18_stages)
