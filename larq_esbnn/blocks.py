"""Every block of the zoo, written once with ES (``tau``) and G (``groups``) as arguments.

With ``tau = groups = 1`` each block is exactly the plain ReActNet / BCDNet block.
Expanding-and-shrinking (ES-BNN, Shi et al., 2025): the real-valued stream (residuals, BN,
RPReLU, LearnableBias) is ``tau * groups`` times wider than the logical width C;
each binary conv shrinks to ``C_out / tau`` outputs (``C_out / (tau g)`` per
group) and its output is tiled ``tau^2 g`` times back to the stream width, so
binary MACs stay ``k^2 C_in C_out H W`` while every output entry sums
``C_in tau k^2`` binary products.

Functions take a Keras tensor and return one; layer names follow a fixed scheme
(``b3_conv1``, ``mlp2_long`` ...) that the weight importer and reports rely on.
"""

import functools
from dataclasses import dataclass

import larq as lq
import tensorflow as tf

from larq_esbnn.layers import (
    BinaryConv2D,
    BinaryLinear,
    ChannelAvgPool,
    ChannelSplit,
    ChannelTile,
    ContextualThresholds,
    InformationRecoupling,
    LayerScale,
    LearnableBias,
    LongShortShift,
    PositionEmbedding,
    RPReLU,
    SymmetricMaxPool2D,
    TemperatureBinaryConv2D,
    TokenAttention,
    UnusedWeight,
    batch_norm,
)

layers = tf.keras.layers


@dataclass(frozen=True)
class BlockConfig:
    """Options shared by every block of a model.

    tau: ES expansion factor; groups: binary group conv G; pad_value: 0 (released
    checkpoints) or 1 (LCE-native) for 3x3 binary convs; symmetric: PyTorch-style
    stride-2 padding; binary_weights: False for step 1 of the two-step recipe;
    dynamic: BCDNet-B contextual thresholds on conv-stage binary convs, with
    reduction ``ratio``; shift_padding: 'circular' or 'zero' for the MLP shifts.
    """

    tau: int = 1
    groups: int = 1
    pad_value: float = 0.0
    symmetric: bool = True
    binary_weights: bool = True
    bn_momentum: float = 0.9
    dynamic: bool = False
    ratio: int = 4
    shift_padding: str = "circular"

    def __post_init__(self):
        for key in ("tau", "groups"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if self.shift_padding not in ("circular", "zero"):
            raise ValueError(
                f"shift_padding must be 'circular' or 'zero', got {self.shift_padding!r}"
            )

    @property
    def width(self):
        """Stream width factor: real-valued channels = logical channels * width."""
        return self.tau * self.groups

    def bn(self, name):
        return batch_norm(name=name, momentum=self.bn_momentum)

    def check_channels(self, channels, where):
        if channels % (self.tau * self.groups):
            raise ValueError(
                f"{where}: {channels} channels are not divisible by tau*groups = "
                f"{self.tau}*{self.groups}; use tau and groups whose product divides "
                f"every binary conv's output width"
            )


def sign_input(x, cfg, name, out_channels=None):
    """The input side of one RSign: [dynamic thresholds] then the learnable bias.

    Returns the biased real tensor (binarised inside the following convs) and,
    with ``cfg.dynamic``, the betas to add to each conv output (else Nones).
    """
    n_out = len(out_channels or [])
    betas = [None] * n_out
    if cfg.dynamic:
        alpha, *betas = ContextualThresholds(out_channels, cfg.ratio, name=f"{name}_ctx")(x)
        x = layers.Subtract(name=f"{name}_ctx_sub")([x, alpha])
    return LearnableBias(name=f"{name}_move")(x), betas


def binary_branch(x, filters, kernel_size, strides, cfg, name, shift=None):
    """ES/G binary conv: ``C_in tau g`` stream -> ``filters / tau`` -> tile -> ``filters tau g``.

    ``x`` is the biased real-valued stream; the sign happens inside each
    BinaryConv2D (so LCE sees sign -> conv). ``shift`` applies a long-short
    shift of that distance to the stream before the sign.
    """
    cfg.check_channels(filters, name)
    if x.shape[-1] % cfg.groups:
        raise ValueError(f"{name}: {x.shape[-1]} input channels do not split into {cfg.groups} groups")
    input_quantizer = "approx_sign"
    if shift is not None:
        if cfg.shift_padding == "zero":
            # zero fill must act on the binary tensor: sign first; LCE keeps it float
            x = lq.quantizers.ApproxSign(name=f"{name}_sign")(x)
            input_quantizer = None
        x = LongShortShift(shift, cfg.shift_padding, name=f"{name}_shift")(x)
    parts = ChannelSplit(cfg.groups, name=f"{name}_split")(x) if cfg.groups > 1 else [x]
    per_group = filters // (cfg.tau * cfg.groups)
    outs = [
        BinaryConv2D(
            per_group,
            kernel_size,
            strides=strides,
            pad_value=cfg.pad_value,
            symmetric=cfg.symmetric,
            binary_weights=cfg.binary_weights,
            input_quantizer=input_quantizer,
            name=name if cfg.groups == 1 else f"{name}_g{i}",
        )(part)
        for i, part in enumerate(parts)
    ]
    y = outs[0] if cfg.groups == 1 else layers.Concatenate(name=f"{name}_concat")(outs)
    reps = cfg.tau * cfg.tau * cfg.groups
    return ChannelTile(reps, name=f"{name}_tile")(y) if reps > 1 else y


def _add_beta(y, beta, name):
    return y if beta is None else layers.Add(name=f"{name}_beta")([y, beta])


def reactnet_block(x, out_channels, strides, cfg, name):
    """ReActNet-A block (MobileNet-V1 shaped; ReActNet, Liu et al., ECCV 2020), with ES as in ES-ReActNet-A.

    Part 1: RSign -> binary 3x3 C_in -> C_in (stride s) -> BN, + x (AvgPool 2x2
    at stride 2) -> RPReLU. Part 2: RSign -> binary 1x1 C_in -> C_out -> BN, + part
    1 (for C_out = 2 C_in: two 1x1 C_in -> C_in, each with its own BN and residual,
    concatenated) -> RPReLU.
    """
    w = cfg.width
    in_channels = x.shape[-1] // w
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"{name}: out_channels must be C_in or 2 C_in, got {in_channels} -> {out_channels}")
    b, (beta,) = sign_input(x, cfg, f"{name}_1", [in_channels * w])
    y = binary_branch(b, in_channels, 3, strides, cfg, f"{name}_conv1")
    y = cfg.bn(f"{name}_bn1")(_add_beta(y, beta, f"{name}_conv1"))
    shortcut = x if strides == 1 else layers.AveragePooling2D(2, name=f"{name}_pool")(x)
    x = RPReLU(name=f"{name}_rprelu1")(layers.Add(name=f"{name}_add1")([y, shortcut]))

    if out_channels == in_channels:
        b, (beta,) = sign_input(x, cfg, f"{name}_2", [in_channels * w])
        y = binary_branch(b, in_channels, 1, 1, cfg, f"{name}_conv2")
        y = cfg.bn(f"{name}_bn2")(_add_beta(y, beta, f"{name}_conv2"))
        y = layers.Add(name=f"{name}_add2")([y, x])
    else:
        b, betas = sign_input(x, cfg, f"{name}_2", [in_channels * w] * 2)
        halves = []
        for tag, beta in zip("ab", betas):
            h = binary_branch(b, in_channels, 1, 1, cfg, f"{name}_conv2{tag}")
            h = cfg.bn(f"{name}_bn2{tag}")(_add_beta(h, beta, f"{name}_conv2{tag}"))
            halves.append(layers.Add(name=f"{name}_add2{tag}")([h, x]))
        y = layers.Concatenate(name=f"{name}_concat")(halves)
    return RPReLU(name=f"{name}_rprelu2")(y)


def basic_layer(x, out_channels, strides, cfg, name):
    """Bi-Real / ReActNet-18 layer: RSign -> binary 3x3 -> BN, + shortcut -> RPReLU.

    The shortcut is ``x``, or AvgPool 2x2 (at stride 2) -> real 1x1 conv -> BN when
    the stride or width changes (in the ES stream width).
    """
    w = cfg.width
    in_channels = x.shape[-1] // w
    b, (beta,) = sign_input(x, cfg, name, [out_channels * w])
    y = binary_branch(b, out_channels, 3, strides, cfg, f"{name}_conv")
    y = cfg.bn(f"{name}_bn")(_add_beta(y, beta, f"{name}_conv"))
    shortcut = x
    if strides != 1 or in_channels != out_channels:
        if strides != 1:
            shortcut = layers.AveragePooling2D(strides, name=f"{name}_pool")(shortcut)
        shortcut = layers.Conv2D(out_channels * w, 1, use_bias=False, name=f"{name}_sc_conv")(shortcut)
        shortcut = cfg.bn(f"{name}_sc_bn")(shortcut)
    return RPReLU(name=f"{name}_rprelu")(layers.Add(name=f"{name}_add")([y, shortcut]))


def real_basic_block(x, out_channels, strides, cfg, name):
    """Real-valued ResNet basic block (He et al. 2016), the teacher's block.

    conv 3x3 (stride s) -> BN -> ReLU -> conv 3x3 -> BN, + shortcut -> ReLU; the
    shortcut is ``x`` or, when the stride or width changes, AvgPool 2x2 -> 1x1
    conv -> BN (the same downsampling shortcut as :func:`basic_layer`).
    """
    conv = functools.partial(layers.Conv2D, kernel_size=3, padding="same", use_bias=False)
    y = conv(out_channels, strides=strides, name=f"{name}_conv1")(x)
    y = layers.ReLU(name=f"{name}_relu1")(cfg.bn(f"{name}_bn1")(y))
    y = cfg.bn(f"{name}_bn2")(conv(out_channels, name=f"{name}_conv2")(y))
    shortcut = x
    if strides != 1 or x.shape[-1] != out_channels:
        if strides != 1:
            shortcut = layers.AveragePooling2D(strides, name=f"{name}_pool")(shortcut)
        shortcut = layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_sc_conv")(shortcut)
        shortcut = cfg.bn(f"{name}_sc_bn")(shortcut)
    return layers.ReLU(name=f"{name}_relu")(layers.Add(name=f"{name}_add")([y, shortcut]))


def mlp_block(x, cfg, name, long_shift=None, point_only=False):
    """BCDNet's long-short range binary MLP block ("Towards Accurate Binary Neural
    Networks via Modeling Contextual Dependencies", Xing et al., ECCV 2022):
    token-wise binary FCs on shifted tokens.

    RSign -> three binary 1x1 convs C -> C on B, shift(B, 1) and shift(B, d) ->
    sum -> BN -> + x -> RPReLU, with ``d = H // 2`` unless given. ``point_only``
    gives the "point block" (pointwise branch alone).
    """
    channels = x.shape[-1] // cfg.width
    cfg.check_channels(channels, name)
    if x.shape[-1] % 4:
        raise ValueError(f"{name}: stream channels ({x.shape[-1]}) must be divisible by 4 for the shifts")
    b = LearnableBias(name=f"{name}_move")(x)
    y = binary_branch(b, channels, 1, 1, cfg, f"{name}_pw")
    if not point_only:
        d = x.shape[1] // 2 if long_shift is None else long_shift
        short = binary_branch(b, channels, 1, 1, cfg, f"{name}_short", shift=1)
        long = binary_branch(b, channels, 1, 1, cfg, f"{name}_long", shift=d)
        y = layers.Add(name=f"{name}_sum")([y, short, long])
    y = cfg.bn(f"{name}_bn")(y)
    return RPReLU(name=f"{name}_rprelu")(layers.Add(name=f"{name}_add")([y, x]))


def mlp_stage(x, cfg, repeats, shift_blocks, point_blocks, name, long_shift=None):
    """``repeats`` x [``shift_blocks`` shift blocks + ``point_blocks`` point blocks]."""
    i = 0
    for _ in range(repeats):
        for kind in [False] * shift_blocks + [True] * point_blocks:
            x = mlp_block(x, cfg, f"{name}{i}", long_shift=long_shift, point_only=kind)
            i += 1
    return x


def stem_tile(x, cfg, name="stem_tile"):
    """Replicate the real-valued stem output to the ES/G stream width."""
    return ChannelTile(cfg.width, name=name)(x) if cfg.width > 1 else x


def classifier(x, num_classes, cfg, heads=1, head_channels="all", classifier_activation=None):
    """Global average pool -> dense (two heads averaged for BCDNet)."""
    if head_channels == "first" and cfg.width > 1:
        x = ChannelSplit(cfg.width, name="head_first_copy")(x)[0]
    elif head_channels not in ("all", "first"):
        raise ValueError(f"head_channels must be 'all' or 'first', got {head_channels!r}")
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    logits = [layers.Dense(num_classes, name="head_fc")(x)]
    if heads == 2:
        logits.append(layers.Dense(num_classes, name="head_fc_dist")(x))
        out = layers.Average(name="head_avg")(logits)
    elif heads == 1:
        out = logits[0]
    else:
        raise ValueError(f"heads must be 1 or 2, got {heads!r}")
    if classifier_activation:
        out = layers.Activation(classifier_activation, name="predictions")(out)
    return out


def mobilenet_stage(x, channels, cfg, name="b"):
    """ReActNet-A blocks over a channel list (block i maps channels[i-1] -> channels[i]).

    Stride 2 where the width changes, except the first block (32 -> 64, stride 1).
    """
    for i in range(1, len(channels)):
        strides = 2 if (channels[i] != channels[i - 1] and i > 1) else 1
        x = reactnet_block(x, channels[i], strides, cfg, f"{name}{i}")
    return x


def resnet_stages(x, widths, layers_per_stage, cfg, name="l", first_strides=1, skip_last=0):
    """Bi-Real style stages of basic layers; stride 2 at the first layer of every
    stage after the first. ``skip_last`` drops that many layers from the last stage."""
    i = 0
    for s, width in enumerate(widths):
        n = layers_per_stage - (skip_last if s == len(widths) - 1 else 0)
        for j in range(n):
            strides = (first_strides if s == 0 else 2) if j == 0 else 1
            x = basic_layer(x, width, strides, cfg, f"{name}{i}")
            i += 1
    return x


def mobilenet_stem(x, cfg):
    """3x3/2 real conv (3 -> 32) and BN, padded symmetrically as in PyTorch, then
    ES tiling: the stem of ReActNet-A and BCDNet-A."""
    x = layers.ZeroPadding2D(1, name="stem_pad")(x)
    x = layers.Conv2D(32, 3, strides=2, use_bias=False, name="stem_conv")(x)
    x = cfg.bn("stem_bn")(x)
    return stem_tile(x, cfg)


def resnet18_stem(x, cfg):
    """7x7/2 real conv (3 -> 64), BN, 3x3/2 max pool, both padded symmetrically
    as in PyTorch, then ES tiling."""
    x = layers.ZeroPadding2D(3, name="stem_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="stem_conv")(x)
    x = cfg.bn("stem_bn")(x)
    x = SymmetricMaxPool2D(name="stem_pool")(x)
    return stem_tile(x, cfg)


# =============================================================================
# Transformer and MLP blocks: BinaryViT (Le & Li 2023) and the binary MLP-Mixer
# =============================================================================
#
# Tokens are NHWC maps (batch, H, W, C), so every token-wise binary linear is a
# 1x1 BinaryConv2D (``BinaryLinear``) and LCE sees a binary conv. BatchNorm over
# channels with statistics over batch x tokens replaces LayerNorm, as in
# BinaryViT's released configuration.


def binary_linear(x, units, cfg, name, centred=True):
    """``LearnableBias`` (the "move") -> sign -> token-wise binary linear (1x1 conv)."""
    b = LearnableBias(name=f"{name}_move")(x)
    return BinaryLinear(units, centred=centred, binary_weights=cfg.binary_weights, name=name)(b)


def _wrapped_linear(x, cfg, name):
    """BinaryViT's wrapped linear, C -> C: ``BN(Lin(x + move)) + x``."""
    y = cfg.bn(f"{name}_bn")(binary_linear(x, x.shape[-1], cfg, name))
    return layers.Add(name=f"{name}_add")([y, x])


def vit_attention(h, heads, reduction, cfg, name):
    r"""BinaryViT attention on the normalised tokens ``h`` (C channels), without the
    residual add, as the released BinaryViT code computes it (Le & Li, "BinaryViT:
    Pushing Binary Vision Transformers Towards Convolutional Models", CVPRW 2023;
    its parameter count is derived in :func:`larq_esbnn.models.binaryvit.binaryvit_s`):

    \\[
    \tilde q = \mathrm{RPReLU}(\mathrm{BN}(\mathrm{Lin}_q(h + s_q)) + h),\quad
    h_r = \mathrm{RPReLU}(\mathrm{BN}(\mathrm{Lin}_r(\bar h + s_r)) + \bar h),\
    \bar h = \mathrm{AvgPool}_R(h)
    \\]
    (``h_r = h`` when R = 1); \\(\tilde k, \tilde v\\) like \\(\tilde q\\) from
    \\(h_r\\); Q, K, V = sign(. + shift); ``ctx`` = :class:`TokenAttention`
    with probabilities in {0, alpha};
    \\(c = \mathrm{RPReLU}(\mathrm{BN}(ctx) + \tilde q + \mathrm{up}(\tilde k) + \mathrm{up}(\tilde v))\\)
    (nearest upsampling by R); output
    \\(\mathrm{LayerScale}(\mathrm{RPReLU}(\mathrm{BN}(\mathrm{Lin}_o(c + s_o)) + c))\\).

    Parameters (C channels): q, k, v, o linears 4 C^2 binary (+ C^2 for the
    reduction linear when R > 1); per-channel: 3 moves + 3 BN + 3 RPReLU + 3
    sign shifts for q/k/v (21 C), context BN + RPReLU (5 C), output move + BN +
    RPReLU + LayerScale (8 C), reduction move + BN + RPReLU (6 C, R > 1), and
    the probability scale alpha (1).
    """
    q = RPReLU(name=f"{name}_q_rprelu")(_wrapped_linear(h, cfg, f"{name}_q"))
    if reduction > 1:
        pooled = layers.AveragePooling2D(reduction, name=f"{name}_pool")(h)
        hr = RPReLU(name=f"{name}_r_rprelu")(_wrapped_linear(pooled, cfg, f"{name}_r"))
    else:
        hr = h
    k = RPReLU(name=f"{name}_k_rprelu")(_wrapped_linear(hr, cfg, f"{name}_k"))
    v = RPReLU(name=f"{name}_v_rprelu")(_wrapped_linear(hr, cfg, f"{name}_v"))
    signs = [
        lq.quantizers.ApproxSign(name=f"{name}_{t}_sign")(LearnableBias(name=f"{name}_{t}_shift")(z))
        for t, z in (("q", q), ("k", k), ("v", v))
    ]
    ctx = TokenAttention(heads, name=f"{name}_attn")(signs)
    if reduction > 1:
        k = layers.UpSampling2D(reduction, interpolation="nearest", name=f"{name}_k_up")(k)
        v = layers.UpSampling2D(reduction, interpolation="nearest", name=f"{name}_v_up")(v)
    ctx = cfg.bn(f"{name}_ctx_bn")(ctx)
    c = RPReLU(name=f"{name}_ctx_rprelu")(layers.Add(name=f"{name}_ctx_add")([ctx, q, k, v]))
    o = RPReLU(name=f"{name}_o_rprelu")(_wrapped_linear(c, cfg, f"{name}_o"))
    return LayerScale(0.1, name=f"{name}_o_scale")(o)


def vit_ffn(h2, ratio, cfg, name):
    r"""BinaryViT FFN (C -> rC -> C) with ES as ``cfg.tau``, without the residual add.

    Base (tau = 1):
    \\(u = \mathrm{RPReLU}(\mathrm{BN}(\mathrm{Lin}_1(h_2 + s_1)) + \mathrm{tile}_r(h_2))\\),
    \\(v = \mathrm{LayerScale}(\mathrm{RPReLU}(\mathrm{BN}(\mathrm{Lin}_2(u + s_2)) + \mathrm{avgpool}_r(u)))\\).

    ES (*inferred* from ES-BNN's remark that ES carries over to Transformers by
    widening the FFN): the input is tiled tau times (tau C,
    one shift per copy, so the sign applies tau thresholds to each value);
    Lin1 maps tau C -> rC / tau and is tiled tau^2 times (hidden stream r tau C);
    Lin2 maps r tau C -> C / tau. The block returns to C channels before the
    residual add by keeping the first C channels (like the ES-BNext head): the
    first C channels of Lin2's output tiled tau^2 times are its output tiled tau
    times, and those of ``avgpool_r(u)`` are the pooled first rC channels of u;
    the cut is made there, so BN2, RPReLU2 and LayerScale stay C wide (no dead
    parameters). Binary weights (2 r C^2) and binary MACs are those of the base;
    each output entry of Lin1 and Lin2 sums tau times more products.
    Extra parameters over the base: (tau - 1) C (1 + 6 r) (move 1, BN 1 and
    RPReLU 1 and move 2 on the wider streams).
    """
    c = h2.shape[-1]
    tau = cfg.tau
    hidden = ratio * c
    for width, what in ((c, "width C"), (hidden, "hidden width r*C")):
        if width % tau:
            raise ValueError(f"{name}: {what} = {width} is not divisible by tau = {tau}")
    e = ChannelTile(tau, name=f"{name}_expand")(h2) if tau > 1 else h2
    y = binary_linear(e, hidden // tau, cfg, f"{name}_fc1")
    if tau > 1:
        y = ChannelTile(tau * tau, name=f"{name}_fc1_tile")(y)
    y = cfg.bn(f"{name}_fc1_bn")(y)
    u = ChannelTile(ratio, name=f"{name}_fc1_sc")(e) if ratio > 1 else e
    u = RPReLU(name=f"{name}_fc1_rprelu")(layers.Add(name=f"{name}_fc1_add")([y, u]))
    y = binary_linear(u, c // tau, cfg, f"{name}_fc2")
    if tau > 1:
        y = ChannelTile(tau, name=f"{name}_fc2_tile")(y)  # = first C channels of the tau^2 tiling
    y = cfg.bn(f"{name}_fc2_bn")(y)
    s = ChannelAvgPool(ratio, name=f"{name}_fc2_sc")(u)
    if tau > 1:
        s = ChannelSplit(tau, name=f"{name}_fc2_first")(s)[0]
    v = RPReLU(name=f"{name}_fc2_rprelu")(layers.Add(name=f"{name}_fc2_add")([y, s]))
    return LayerScale(0.1, name=f"{name}_fc2_scale")(v)


def _axis_pool(x, k, axis, name):
    """1-D average pool of size k along H or W, stride 1, zero padding counted in the
    mean (PyTorch ``AvgPool2d((k, 1)), padding=((k - 1) / 2, 0)``)."""
    p = (k - 1) // 2
    pad = ((p, p), (0, 0)) if axis == "h" else ((0, 0), (p, p))
    size = (k, 1) if axis == "h" else (1, k)
    y = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return layers.AveragePooling2D(size, strides=1, padding="valid", name=f"{name}_pool")(y)


def vit_block(x, heads, reduction, ratio, cfg, name, pool_branches=(3, 5)):
    r"""One pre-norm BinaryViT block (Le & Li, CVPRW 2023):

    \\(x \leftarrow x + \mathrm{Attn}(\mathrm{BN}(x))\\), then with
    \\(h_2 = \mathrm{BN}(x)\\):
    \\(x \leftarrow x + \mathrm{FFN}(h_2) + \sum_{k, a} \mathrm{LayerScale}_0(\mathrm{pool}_{k,a}(h_2))\\)
    over kernels ``pool_branches`` and axes {H, W} (LayerScale starting at 0).
    """
    h = cfg.bn(f"{name}_norm1")(x)
    x = layers.Add(name=f"{name}_add1")([vit_attention(h, heads, reduction, cfg, f"{name}_att"), x])
    h2 = cfg.bn(f"{name}_norm2")(x)
    terms = [vit_ffn(h2, ratio, cfg, f"{name}_ffn"), x]
    for k in pool_branches:
        for axis in ("h", "w"):
            branch = _axis_pool(h2, k, axis, f"{name}_avg{axis}{k}")
            terms.append(LayerScale(0.0, name=f"{name}_avg{axis}{k}_scale")(branch))
    return layers.Add(name=f"{name}_add2")(terms)


def vit_patch_merging(x, out_channels, cfg, name):
    r"""Binary 2x2 patch merging between BinaryViT stages (C -> 2C, tokens / 4):

    \\(z = \mathrm{BN}_0(x)\\),
    \\(y = \mathrm{RPReLU}(\mathrm{BN}(\mathrm{BinConv}_{2\times2, s2}(z + s)) +
    \mathrm{tile}_{2}(\mathrm{AvgPool}_2(z))) + E\\) with a new position embedding E.
    The conv's kernel is ReActNet's scaled sign (no centring). Parameters:
    4 C_in C_out binary + 3 C_in + 5 C_out + (H/2)(W/2) C_out.
    """
    c = x.shape[-1]
    if out_channels % c:
        raise ValueError(f"{name}: out_channels {out_channels} must be a multiple of the input width {c}")
    z = cfg.bn(f"{name}_norm")(x)
    shortcut = layers.AveragePooling2D(2, name=f"{name}_pool")(z)
    if out_channels > c:
        shortcut = ChannelTile(out_channels // c, name=f"{name}_tile")(shortcut)
    y = BinaryConv2D(
        out_channels, 2, strides=2, symmetric=False, binary_weights=cfg.binary_weights, name=f"{name}_conv"
    )(LearnableBias(name=f"{name}_move")(z))
    y = cfg.bn(f"{name}_bn")(y)
    y = RPReLU(name=f"{name}_rprelu")(layers.Add(name=f"{name}_add")([y, shortcut]))
    return PositionEmbedding(name=f"{name}_pos")(y)


def _mixer_mlp(x, expansion, cfg, name):
    """Binary two-layer MLP over the channels of ``x``: move -> sign -> 1x1 binary
    conv C -> eC -> BN -> RPReLU -> move -> sign -> 1x1 binary conv eC -> C -> BN."""
    c = x.shape[-1]
    y = binary_linear(x, expansion * c, cfg, f"{name}_fc1", centred=False)
    y = RPReLU(name=f"{name}_fc1_rprelu")(cfg.bn(f"{name}_fc1_bn")(y))
    y = binary_linear(y, c, cfg, f"{name}_fc2", centred=False)
    return cfg.bn(f"{name}_fc2_bn")(y)


def mixer_block(x, cfg, name, token_expansion=4, channel_expansion=4):
    r"""Binary MLP-Mixer block (BCDNet's pilot, *inferred*: no released code).

    With tokens X (N x C): \\(X \leftarrow X + \mathrm{MLP}_{tok}(\mathrm{BN}(X)^\top)^\top\\),
    then \\(X \leftarrow X + \mathrm{MLP}_{ch}(\mathrm{BN}(X))\\), where each MLP is
    move -> sign -> binary linear (ReActNet's scaled sign weights) -> BN ->
    RPReLU -> move -> sign -> binary linear -> BN, widening by the expansion in
    between (GELU replaced by RPReLU, LayerNorm by BN). The token MLP runs as a
    1x1 binary conv on the transposed map (1, C, N), so it stays an LCE bconv.

    Parameters: token MLP 2 e_t N^2 binary + 2 C + (3 + 6 e_t) N real;
    channel MLP 2 e_c C^2 binary + (5 + 6 e_c) C real.
    """
    h, w, c = x.shape[1:]
    n = h * w
    t = cfg.bn(f"{name}_norm1")(x)
    t = layers.Permute((1, 3, 2), name=f"{name}_to_tokens")(layers.Reshape((1, n, c), name=f"{name}_flat")(t))
    t = _mixer_mlp(t, token_expansion, cfg, f"{name}_tok")
    t = layers.Permute((1, 3, 2), name=f"{name}_from_tokens")(t)
    t = layers.Reshape((h, w, c), name=f"{name}_unflat")(t)
    x = layers.Add(name=f"{name}_add1")([x, t])
    y = _mixer_mlp(cfg.bn(f"{name}_norm2")(x), channel_expansion, cfg, f"{name}_ch")
    return layers.Add(name=f"{name}_add2")([x, y])


# ----------------------------------------------------------------------------- BNext
#
# BNext (Guo et al., "Join the High Accuracy Club on ImageNet with A Binary Neural
# Network Ticket", 2022; the released hpi-xnor/BNext ``src/bnext.py``) and ES-BNext
# (the ES-BNN release ``src/bnext_rep_ops.py``, Shi et al., 2025).
# ``tau`` is the release's ``rep_beta``: every real-valued feature map is tau
# times wider, every binary conv maps tau C -> C / tau and its output is tiled
# tau^2 times, the SE convs shrink the same way and are tiled tau^2 times.
# Layer names: unit ``p`` = ``b{i}_u3`` (the 3x3 unit, torch ``Attention``),
# ``b{i}_ffn`` or ``b{i}_ffn1`` / ``b{i}_ffn2`` (torch ``FFN`` / ``FFN_1`` /
# ``FFN_2``); inside a unit ``p_move``, ``p_conv``, ``p_bn1``, ``p_prelu2``,
# ``p_recouple`` (lambda), ``p_se1``, ``p_se2``, ``p_bn2``, ``p_prelu1``.


def _tile(x, reps, name):
    return ChannelTile(reps, name=name)(x) if reps > 1 else x


def bnext_se(m, cfg, name):
    r"""Squeeze-and-expand of BNext, in the ES form of the release.

    \\(s = \sigma(\mathrm{tile}_{\tau^2}(W_2\, \mathrm{ReLU}(\mathrm{tile}_{\tau^2}(W_1
    \mathrm{GAP}(m) + b_1)) + b_2))\\) with \\(W_1: \tau C \to C/(8\tau)\\) and
    \\(W_2: \tau C/8 \to C/\tau\\); for tau = 1 the plain C -> C/8 -> C SE block.
    Parameters: \\(C^2/8 + C/(8\tau) + C^2/8 + C/\tau\\).
    """
    tau = cfg.tau
    channels = m.shape[-1] // tau
    if channels % (8 * tau):
        raise ValueError(f"{name}: SE needs C/8 divisible by tau; got C={channels}, tau={tau}")
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(m)
    s = layers.Conv2D(channels // (8 * tau), 1, name=f"{name}_se1")(s)
    s = _tile(s, tau * tau, f"{name}_se1_tile")
    s = layers.ReLU(name=f"{name}_se_relu")(s)
    s = layers.Conv2D(channels // tau, 1, name=f"{name}_se2")(s)
    s = _tile(s, tau * tau, f"{name}_se2_tile")
    return layers.Activation("sigmoid", name=f"{name}_se_sigmoid")(s)


def bnext_unit(x, kind, kernel_size, strides, cfg, name, temperature=0.0, unused_weights=True):
    r"""One BNext unit C -> C (stream width tau C); ``kind`` 'ffn' or 'attention'.

    Main path: \\(s = \mathrm{HardSign}(x + b)\\), \\(y = \mathrm{PReLU}_2(\mathrm{BN}_1(
    \mathrm{tile}_{\tau^2}(\mathrm{BinConv}_k(s))))\\) (k = ``kernel_size``: 3 for the first
    unit of a block, 1 for the FFN_1x1 units), information recoupling
    \\(m = \lambda x' + (1 - \lambda) y\\), \\(y \leftarrow \mathrm{SE}(m) \odot y\\),
    where \\(x'\\) is x, AvgPool 2x2 at stride 2.

    - 'ffn' (FFN_3x3 / FFN_1x1): \\(\mathrm{out} = \mathrm{BN}_2(y) + x'\\);
    - 'attention' (ELM attention): \\(r = \mathrm{PReLU}_1(x)\\) (pooled at stride 2),
      \\(\mathrm{out} = \mathrm{BN}_2(y \odot r) + r\\).

    The release also builds a PReLU_1 in 'ffn' units that it never calls; with
    ``unused_weights`` it is kept as an :class:`UnusedWeight` (C tau no-op
    weights). Trainable parameters (tau = 1, k x k conv): \\(k^2 C^2\\) binary +
    \\(C\\) (move) + \\(4C\\) (BN_1, BN_2) + \\(2C\\) (PReLUs) + \\(C\\) (lambda) +
    \\(C^2/4 + 9C/8\\) (SE).
    """
    if cfg.groups != 1:
        raise ValueError(f"{name}: BNext units have no binary group conv; groups must be 1, got {cfg.groups}")
    tau = cfg.tau
    stream = x.shape[-1]
    channels = stream // tau
    cfg.check_channels(channels, name)
    pool = (lambda t, tag: layers.AveragePooling2D(2, name=f"{name}_{tag}_pool")(t)) if strides == 2 else (lambda t, tag: t)
    if kind == "attention":
        residual = pool(layers.PReLU(alpha_initializer=tf.keras.initializers.Constant(0.25), shared_axes=[1, 2],
                                     name=f"{name}_prelu1")(x), "prelu1")
    elif kind == "ffn":
        if unused_weights:
            x = UnusedWeight(0.25, name=f"{name}_prelu1")(x)
        residual = None
    else:
        raise ValueError(f"{name}: kind must be 'ffn' or 'attention', got {kind!r}")
    shortcut = pool(x, "input")
    b = LearnableBias(name=f"{name}_move")(x)
    y = TemperatureBinaryConv2D(
        channels // tau, kernel_size, strides=strides, temperature=temperature,
        pad_value=cfg.pad_value, symmetric=cfg.symmetric, binary_weights=cfg.binary_weights,
        name=f"{name}_conv",
    )(b)
    y = _tile(y, tau * tau, f"{name}_conv_tile")
    y = cfg.bn(f"{name}_bn1")(y)
    y = layers.PReLU(alpha_initializer=tf.keras.initializers.Constant(0.25), shared_axes=[1, 2],
                     name=f"{name}_prelu2")(y)
    m = InformationRecoupling(name=f"{name}_recouple")([shortcut, y])
    y = layers.Multiply(name=f"{name}_se_mul")([bnext_se(m, cfg, name), y])
    if kind == "attention":
        y = cfg.bn(f"{name}_bn2")(layers.Multiply(name=f"{name}_elm_mul")([y, residual]))
        return layers.Add(name=f"{name}_add")([y, residual])
    return layers.Add(name=f"{name}_add")([cfg.bn(f"{name}_bn2")(y), shortcut])


def bnext_block(x, out_channels, strides, attention, cfg, name, temperature=0.0, unused_weights=True):
    """BNext block C_in -> C_out (C_out = C_in or 2 C_in), as the BNext release's ``src/bnext.py`` builds it.

    A 3x3 unit (ELM attention if ``attention`` else FFN_3x3) at ``strides``, then
    one 1x1 FFN unit, or for C_out = 2 C_in two parallel 1x1 FFN units
    concatenated as [FFN_1, FFN_2] (in the ES stream: [tau C_in, tau C_in]).
    """
    in_channels = x.shape[-1] // cfg.tau
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"{name}: out_channels must be C_in or 2 C_in, got {in_channels} -> {out_channels}")
    kw = dict(temperature=temperature, unused_weights=unused_weights)
    x = bnext_unit(x, "attention" if attention else "ffn", 3, strides, cfg, f"{name}_u3", **kw)
    if out_channels == in_channels:
        return bnext_unit(x, "ffn", 1, 1, cfg, f"{name}_ffn", **kw)
    halves = [bnext_unit(x, "ffn", 1, 1, cfg, f"{name}_ffn{j}", **kw) for j in (1, 2)]
    return layers.Concatenate(name=f"{name}_concat")(halves)


def bnext_stages(x, channels, cfg, name="b", temperature=0.0, unused_weights=True):
    """BNext blocks over a width list (block i maps channels[i-1] -> channels[i]).

    Stride 2 where the width changes, except block 1; block 1 and odd blocks use
    FFN_3x3, even blocks ELM attention (the release's "bias" / "scale" modes).
    """
    for i in range(1, len(channels)):
        strides = 2 if (channels[i] != channels[i - 1] and i > 1) else 1
        attention = i > 1 and i % 2 == 0
        x = bnext_block(x, channels[i], strides, attention, cfg, f"{name}{i}", temperature, unused_weights)
    return x


def width_stage_ends(channels):
    """Stage ends of a channel-list layout (:func:`mobilenet_stage`, :func:`bnext_stages`):
    ``(block index, channels, stride-2 blocks so far)`` for the last block at each width."""
    ends, down = [], 0
    for i in range(1, len(channels)):
        down += channels[i] != channels[i - 1] and i > 1
        if i == len(channels) - 1 or channels[i + 1] != channels[i]:
            ends.append((i, channels[i], down))
    return ends
