"""BCDNet's binary MLP pilots (section 3 of the paper): a binarised MLP-Mixer-S
and the ResNet-MLP hybrid of its Fig. 3.

BCDNet motivates its long-short range MLP by first binarising a plain MLP-Mixer
(token-mixing and channel-mixing MLPs, expansion 4, real-valued first and last
layers), which it found hard to optimise, and then a ReActNet-18 whose last
three conv layers are replaced by binarised Mixer blocks. No code was released
for either: the block (:func:`larq_esbnn.blocks.mixer_block`) is *inferred*
from the paper's description and the zoo's binarisation (move -> sign ->
binary linear -> BN, RPReLU as the activation, BN instead of LayerNorm).
"""

import tensorflow as tf

from larq_esbnn import blocks
from larq_esbnn.models.common import build, check_num_classes
from larq_esbnn.models.reactnet import RESNET18_WIDTHS
from larq_esbnn.registry import register_model

layers = tf.keras.layers


@register_model("mlp_mixer_s_binary", "Binarised MLP-Mixer-S/16 (BCDNet's pilot: binary token and channel MLPs)")
def mlp_mixer_s_binary(
    *,
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=1000,
    width=512,
    depth=8,
    patch_size=16,
    token_expansion=4,
    channel_expansion=4,
    pad_value=0.0,
    binary_weights=True,
    bn_momentum=0.9,
    classifier_activation=None,
    name="mlp_mixer_s_binary",
):
    r"""Binary MLP-Mixer-S/16: real patch embedding (conv ``patch_size`` stride
    ``patch_size``, 3 -> ``width``, with bias), ``depth`` binary Mixer blocks,
    BN, mean over tokens, real dense head. Both MLPs widen by 4 (the issue's
    "expansion 4"; Tolstikhin et al.'s Mixer-S uses 256 token-MLP units, about
    1.3 N, and 2048 = 4 C channel-MLP units).

    Trainable parameters at 224 (N = 196 tokens, C = 512), 1000 classes:
    stem 768 * 512 + 512 = 393,728; per block: token MLP 2 * 4 * 196^2 =
    307,328 binary + 2 C + 27 N = 6,316 real (norm, moves, BNs, RPReLU); channel
    MLP 2 * 4 * 512^2 = 2,097,152 binary + 29 C = 14,848 real; per block
    2,425,644, times 8 = 19,405,152; head BN 1,024 + dense 513,000:
    **20,312,904** in total, 19,235,840 of them binary.
    ``pad_value`` (0 or 1) is accepted for the zoo-wide API only: 1x1 binary
    convs never pad.
    """
    args = dict(locals())
    check_num_classes(name, num_classes)
    if pad_value not in (0, 0.0, 1, 1.0):
        raise ValueError(f"{name}: pad_value must be 0 or 1, got {pad_value!r}")
    for key, value in (("width", width), ("depth", depth), ("patch_size", patch_size),
                       ("token_expansion", token_expansion), ("channel_expansion", channel_expansion)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")

    def features(x, cfg):
        x = layers.Conv2D(width, patch_size, strides=patch_size, name="stem_conv")(x)
        for i in range(depth):
            x = blocks.mixer_block(x, cfg, f"mix{i}", token_expansion, channel_expansion)
        return cfg.bn("head_norm")(x)

    # pad_value is checked but not used (no binary conv here pads), so not in the config
    cfg = blocks.BlockConfig(binary_weights=binary_weights, bn_momentum=bn_momentum)
    return build(args, features, multiple=patch_size, min_size=patch_size, cfg=cfg)


@register_model("reactnet_18_mixer", "ReActNet-18 with its last 3 conv layers replaced by 3 binary Mixer blocks (BCDNet Fig. 3)")
def reactnet_18_mixer(
    *,
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=1000,
    mixer_blocks=3,
    token_expansion=4,
    channel_expansion=4,
    pad_value=0.0,
    symmetric=True,
    binary_weights=True,
    bn_momentum=0.9,
    classifier_activation=None,
    name="reactnet_18_mixer",
):
    r"""The ResNet-MLP hybrid of BCDNet's Fig. 3 (*inferred*: no released code).

    ReActNet-18 up to the downsampling layer of stage 4 (512 x 7 x 7 at 224),
    then ``mixer_blocks`` binary Mixer blocks (:func:`larq_esbnn.blocks.mixer_block`)
    instead of the last three binary 3x3 conv layers, GAP and a dense head.

    Trainable parameters at 224 (N = 49, C = 512), 1000 classes: ReActNet-18's
    11,704,424 minus the three removed layers (3 (9 * 512^2 + 6 * 512) =
    7,087,104: kernel, move, BN and RPReLU) plus three Mixer blocks of
    token MLP 2 * 4 * 49^2 = 19,208 binary + 2 * 512 + 27 * 49 = 2,347 real and
    channel MLP 2,097,152 binary + 14,848 real (2,133,555 per block, 6,400,665
    for three): **11,017,985**, 10,256,664 of them binary (3,907,584 in the
    13 remaining conv layers).
    """
    args = dict(locals())

    def features(x, cfg):
        x = blocks.resnet_stages(blocks.resnet18_stem(x, cfg), RESNET18_WIDTHS, 4, cfg, skip_last=3)
        for i in range(mixer_blocks):
            x = blocks.mixer_block(x, cfg, f"mix{i}", token_expansion, channel_expansion)
        return x

    return build(args, features)
