"""BinaryViT (Le & Li, CVPRW 2023) and ES-BinaryViT; a reduced pair for CIFAR-10.

"BinaryViT: Pushing Binary Vision Transformers Towards Convolutional Models",
from the released definition (``configs/binaryvit-small-patch4-224`` with ``--model-type
extra-res-pyramid --replace-ln-bn --weight-bits 1 --input-bits 1 --avg-res3
--avg-res5``). ``es_binaryvit_s`` is ``binaryvit_s(tau=2)``: expanding-and-
shrinking on the FFN only. That placement is *inferred* (ES-BNN's paper says
ES carries over to Transformers by widening the FFN; no transformer code was
released); attention, patch merging and the residual stream stay at C.
"""

import math

import tensorflow as tf

from larq_esbnn import blocks
from larq_esbnn.layers import PositionEmbedding
from larq_esbnn.models.common import check_num_classes, finish, model_input
from larq_esbnn.registry import register_model, register_variant

layers = tf.keras.layers


def _check_stages(name, **lists):
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{name}: per-stage lists must have one length, got {lengths}")
    for key, values in lists.items():
        if not all(isinstance(v, int) and v >= 1 for v in values):
            raise ValueError(f"{name}: {key} must be positive integers, got {list(values)}")
    dims = lists["dims"]
    for a, b in zip(dims, dims[1:]):
        if b % a:
            raise ValueError(f"{name}: each stage width must be a multiple of the previous one, got {list(dims)}")
    for c, h in zip(dims, lists["heads"]):
        if c % h:
            raise ValueError(f"{name}: width {c} does not split into {h} heads")


@register_model("binaryvit_s", "BinaryViT-S: fully binary pyramid ViT, patch 4, BN instead of LN ({top1} % reported)", reported=("67.7", "BinaryViT"))
def binaryvit_s(
    *,
    input_shape=None,
    input_tensor=None,
    weights=None,
    include_top=True,
    num_classes=1000,
    tau=1,
    dims=(64, 128, 256, 512),
    depths=(3, 4, 8, 4),
    heads=(1, 2, 4, 8),
    reductions=(8, 4, 1, 1),
    mlp_ratios=(8, 8, 4, 4),
    patch_size=4,
    pool_branches=(3, 5),
    pad_value=0.0,
    binary_weights=True,
    bn_momentum=0.9,
    classifier_activation=None,
    default_size=224,
    name="binaryvit_s",
):
    r"""BinaryViT-S (Le & Li 2023); with ``tau > 1`` ES-BinaryViT (ES on the FFN).

    Stem: real conv ``patch_size`` x ``patch_size``, stride ``patch_size``, 3 ->
    dims[0] with bias, BN, learned position embedding. Stage s: ``depths[s]``
    pre-norm blocks (:func:`larq_esbnn.blocks.vit_block`) of width ``dims[s]``
    with ``heads[s]`` heads, K/V spatial reduction ``reductions[s]`` and FFN
    ratio ``mlp_ratios[s]``, then (except after the last stage) binary 2x2
    patch merging to dims[s+1] with a new position embedding. Head: BN, mean
    over tokens, dense. ``include_top=False`` returns the normalised last token
    map (7 x 7 x 512 at 224). Every binary linear (q, k, v, reduction, output,
    FFN 1 and 2) is a 1x1 binary conv on the token map; Q, K, V are signs and the
    attention probabilities are binarised to {0, alpha}.

    Trainable parameters at 224, 1000 classes: **22,491,771** (the released
    definition, measured in PyTorch), of them **21,196,800** binary:

    - binary: per block 4 C^2 (q, k, v, o) + C^2 (reduction, stages 1-2) +
      2 r C^2 (FFN) -> 3 (5 + 16) 64^2 + 4 (5 + 16) 128^2 + 8 (4 + 8) 256^2 +
      4 (4 + 8) 512^2 = 20,508,672; patch merging 4 (64*128 + 128*256 +
      256*512) = 688,128;
    - real, per block: attention 34 C + 1 (+ 6 C with reduction), FFN
      C + 5 r C + r C + 7 C, block norms 4 C, four pooling LayerScales 8 C
      -> 395,539 over the 19 blocks; stem 3,136 + BN 128 + position 3136 * 64 =
      200,704; merging 3 C_in + 5 C_out + (H/2)(W/2) C_out = 181,440; final BN
      1,024; classifier 513,000. Total 22,491,771.

    The count implies no bias on the q / k / v / reduction linears (the config
    file in the repository says ``qkv_bias: true``, which would add 15,104).
    ES (tau = 2) adds (tau - 1) C (1 + 6 r) per block: 136,896 in total
    (22,628,667), and keeps the binary weights and BOPs.

    ``dims``, ``depths``, ``heads``, ``reductions``, ``mlp_ratios``,
    ``patch_size`` and ``default_size`` describe other sizes (the CIFAR-10 pair
    below); ``pool_branches=()`` drops the multi-pooling branches.
    ``pad_value`` (0 or 1) is accepted for the zoo-wide API only: the binary
    convs here (1x1, and 2x2 at stride 2 on even maps) never pad.
    """
    check_num_classes(name, num_classes)
    if pad_value not in (0, 0.0, 1, 1.0):
        raise ValueError(f"{name}: pad_value must be 0 or 1, got {pad_value!r}")
    cfg = blocks.BlockConfig(tau=tau, binary_weights=binary_weights, bn_momentum=bn_momentum)
    dims, depths, heads = tuple(dims), tuple(depths), tuple(heads)
    reductions, mlp_ratios = tuple(reductions), tuple(mlp_ratios)
    _check_stages(name, dims=dims, depths=depths, heads=heads, reductions=reductions, mlp_ratios=mlp_ratios)
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"{name}: patch_size must be a positive integer, got {patch_size!r}")
    # each stage's token grid must be even (merging) and divisible by its reduction
    multiple = 1
    for s, r in enumerate(reductions):
        step = patch_size * 2**s * (r if s == len(reductions) - 1 else math.lcm(r, 2))
        multiple = math.lcm(multiple, step)
    x, inputs = model_input(name, input_shape, input_tensor, default_size, multiple, multiple)
    x = layers.Conv2D(dims[0], patch_size, strides=patch_size, name="stem_conv")(x)
    x = cfg.bn("stem_bn")(x)
    x = PositionEmbedding(name="stem_pos")(x)
    i = 0
    for s, depth in enumerate(depths):
        for _ in range(depth):
            x = blocks.vit_block(x, heads[s], reductions[s], mlp_ratios[s], cfg, f"v{i}", tuple(pool_branches))
            i += 1
        if s + 1 < len(dims):
            x = blocks.vit_patch_merging(x, dims[s + 1], cfg, f"merge{s + 1}")
    x = cfg.bn("head_norm")(x)
    if include_top:
        x = blocks.classifier(x, num_classes, cfg, 1, "all", classifier_activation)
    return finish(inputs, x, name, weights)


es_binaryvit_s = register_variant(
    "es_binaryvit_s", binaryvit_s,
    "ES-BinaryViT-S: BinaryViT-S with expanding-and-shrinking in the FFN, tau=2 (inferred placement)", tau=2,
)

CIFAR = dict(
    dims=(32, 64, 128, 256), depths=(1, 1, 2, 1), heads=(1, 2, 4, 8), reductions=(4, 2, 1, 1),
    mlp_ratios=(4, 4, 4, 4), patch_size=2, default_size=32, num_classes=10,
)
binaryvit_cifar = register_variant(
    "binaryvit_cifar", binaryvit_s,
    "Reduced BinaryViT for 32x32 (patch 2, widths 32-256, 5 blocks) for CIFAR-10 checks", 32, **CIFAR,
)
es_binaryvit_cifar = register_variant(
    "es_binaryvit_cifar", binaryvit_s, "binaryvit_cifar with ES in the FFN, tau=2", 32, tau=2, **CIFAR,
)
