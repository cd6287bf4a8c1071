"""ReActNet-A and ReActNet-18, with ES (``tau``) and G (``groups``) as arguments.

Spec sections 2, 3 and 5.3. ``es_reactnet_a`` is ``reactnet_a(tau=2)``.
"""

import tensorflow as tf

from larq_esbnn import blocks
from larq_esbnn.models.common import check_num_classes, finish, model_input
from larq_esbnn.models.registry import register_model, register_variant

layers = tf.keras.layers

REACTNET_A_CHANNELS = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


@register_model(
    "reactnet_a", "ReActNet-A: MobileNet-V1 shaped BNN, RSign/RPReLU (ImageNet 69.4 % reported)"
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

    Trainable parameters at 224, 1000 classes: 29,343,592 (tau=1, the released
    definition); 30,432,072 for tau=2 (the Rep-ReActNet release): the binary
    kernels keep their size (C_in tau x C_out / tau), the real-valued per-channel
    parameters (BN, biases, PReLU) double and the head reads 2048 features.
    """
    check_num_classes(name, num_classes)
    cfg = blocks.BlockConfig(
        tau=tau, groups=groups, pad_value=pad_value, symmetric=symmetric,
        binary_weights=binary_weights, bn_momentum=bn_momentum,
    )
    x, inputs = model_input(name, input_shape, input_tensor, 224, 32, 32)
    x = layers.ZeroPadding2D(1, name="stem_pad")(x)
    x = layers.Conv2D(32, 3, strides=2, use_bias=False, name="stem_conv")(x)
    x = cfg.bn("stem_bn")(x)
    x = blocks.stem_tile(x, cfg)
    x = blocks.mobilenet_stage(x, REACTNET_A_CHANNELS, cfg)
    if include_top:
        x = blocks.classifier(x, num_classes, cfg, 1, head_channels, classifier_activation)
    return finish(inputs, x, name, weights)


es_reactnet_a = register_variant(
    "es_reactnet_a", reactnet_a, "ES-ReActNet-A: ReActNet-A with expanding-and-shrinking, tau=2 (71.34 % reported)", tau=2
)


@register_model("reactnet_18", "ReActNet-18: Bi-Real ResNet-18 layout with RSign/RPReLU (65.5 % reported)")
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

    Trainable parameters (224, 1000 classes): 11,704,424 for tau=1 (released
    definition). With ES the binary kernels keep their size; per-channel
    parameters, the real 1x1 shortcuts (C_in tau x C_out tau: tau^2 larger) and
    the head input (512 tau) grow; the count is pinned in the tests.
    """
    check_num_classes(name, num_classes)
    cfg = blocks.BlockConfig(
        tau=tau, groups=groups, pad_value=pad_value, symmetric=symmetric,
        binary_weights=binary_weights, bn_momentum=bn_momentum,
    )
    x, inputs = model_input(name, input_shape, input_tensor, 224, 32, 32)
    x = blocks.resnet18_stem(x, cfg)
    x = blocks.resnet_stages(x, [64, 128, 256, 512], 4, cfg)
    if include_top:
        x = blocks.classifier(x, num_classes, cfg, 1, head_channels, classifier_activation)
    return finish(inputs, x, name, weights)


es_reactnet_18 = register_variant(
    "es_reactnet_18", reactnet_18, "ES-ReActNet-18: ReActNet-18 with expanding-and-shrinking, tau=2 (68.0 % reported)", tau=2
)
