"""U-Nets whose encoder is a keras.applications backbone, with or without its ImageNet weights.

The models take raw pixel values 0..255 and apply the backbone's own preprocessing inside
themselves, so the image size and the normalisation travel with the saved .keras file.
"""

import os
import warnings
from collections import namedtuple

from kit.cli import import_tensorflow

import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

STRIDE = 32  # every backbone halves the size 5 times: the working size is a multiple
ENCODER = "encoder"  # the nested model that holds the backbone's layers (see freeze)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# constructor: the keras.applications function, called with include_top=False.
# skips: the last layers at strides 2, 4, 8 and 16; the backbone's output is the stride-32
#   bottleneck, so that every layer of the no-top weights file is part of the model.
# preprocessing: the mode of the family's keras.applications preprocess_input:
#   "tf" scales to [-1, 1], "caffe" turns RGB into BGR and subtracts the ImageNet mean,
#   "none" leaves 0..255 to the backbone (EfficientNetV2's include_preprocessing).
# weights_file: the no-top file keras.applications downloads for weights="imagenet".
Encoder = namedtuple("Encoder", "constructor skips preprocessing weights_file")

ENCODERS = {
    "mobilenetv2": Encoder(
        keras.applications.MobileNetV2,
        # The expansions before each strided depthwise convolution, as in the TensorFlow
        # segmentation tutorial: the block outputs themselves are narrow linear bottlenecks.
        ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"
         ),
        "tf",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    "efficientnetv2b0": Encoder(
        keras.applications.EfficientNetV2B0,
        ("block1a_project_activation", "block2b_add", "block3b_add", "block5e_add"), "none",
        "efficientnetv2-b0_notop.h5"),
    "resnet50": Encoder(keras.applications.ResNet50,
                        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
                        "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


class EncoderWeightsError(ValueError):
    """A weights file that is missing or does not fit the backbone: one line, naming the file."""


def _weights_error(path, name, problem):
    hint = f"give the no-top ImageNet weights of {name}"
    if name in ENCODERS:
        hint += f" (keras.applications file name {ENCODERS[name].weights_file})"
    problem = " ".join(str(problem).split())  # Keras' own messages span several lines
    if len(problem) > 300:
        problem = problem[:300] + "..."
    return EncoderWeightsError(f"{path} {problem}: {hint}, or a .weights.h5 saved from it")


def load_encoder_weights(backbone, path, name=None):
    """Load a no-top weights file into `backbone` the way keras.applications loads the file it
    downloads (model.load_weights): a legacy .h5 matched layer by layer in order, or a Keras 3
    .weights.h5 saved with backbone.save_weights. name: the ENCODERS key, for the message."""
    name = name or backbone.name
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _weights_error(path, name, "does not exist")
    try:
        with warnings.catch_warnings():
            # Keras warns about every group it cannot match, then raises: the error says it.
            warnings.simplefilter("ignore", UserWarning)
            backbone.load_weights(path)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise _weights_error(path, name, f"does not fit {name} ({e})") from e


def preprocess(name, inputs):
    """Raw 0..255 pixels, 1 or 3 channels -> what the backbone `name` expects, with layers that
    load with safe_mode=True (no Lambda)."""
    x = inputs
    if inputs.shape[-1] == 1:
        # Grey to RGB, so that the backbone's first convolution and its weights apply unchanged.
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    mode = ENCODERS[name].preprocessing
    if mode == "tf":
        x = layers.Rescaling(1 / 127.5, offset=-1, name="to_plus_minus_1")(x)
    elif mode == "caffe":
        x = ops.flip(x, axis=-1)  # the caffe weights were trained on BGR images
        x = layers.Normalization(mean=CAFFE_MEAN_BGR, variance=(1, 1, 1),
                                 name="minus_imagenet_mean")(x)
    return x


def build_encoder(name, image_size, weights=None):
    """The backbone as a model of 3-channel images with 5 outputs: the skips at strides 2, 4, 8
    and 16, and the stride-32 bottleneck. weights: None (random), "imagenet" (download) or a
    weights file (see load_encoder_weights)."""
    spec = ENCODERS[name]
    from_file = weights not in (None, "imagenet")
    backbone = spec.constructor(include_top=False, input_shape=(*image_size, 3),
                                weights=None if from_file else weights)
    if from_file:
        load_encoder_weights(backbone, weights, name)
    outputs = [backbone.get_layer(skip).output for skip in spec.skips] + [backbone.output]
    return keras.Model(backbone.input, outputs, name=ENCODER)


def conv_block(x, filters, name):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build(name, image_size, channels=1, outputs=1, weights=None, decoder_width=16, head=None):
    """U-Net with the backbone `name` (a key of ENCODERS) as its encoder, taking raw pixel
    values 0..255 of image_size (rows, cols), both multiples of STRIDE. outputs: 1 (sigmoid,
    binary masks) or K+1 (softmax, label masks). weights: as for build_encoder. head: a function
    of the stride-32 bottleneck making a second output (train.py --gate: model.presence_head,
    passed in because kit/model.py imports this module)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}")
    if any(side % STRIDE for side in image_size):
        raise ValueError(f"image size {tuple(image_size)} of encoder {name}: "
                         f"both sides must be multiples of {STRIDE}")
    inputs = keras.Input((*image_size, channels))
    *skips, x = build_encoder(name, image_size, weights)(preprocess(name, inputs))
    bottleneck = x
    # Level k works at stride 2**k: upsample, join the skip of that stride (none at full size),
    # convolve.
    for level, skip in reversed(list(enumerate([None, *skips]))):
        x = layers.UpSampling2D(interpolation="bilinear", name=f"decoder{level}_up")(x)
        if skip is not None:
            x = layers.Concatenate(name=f"decoder{level}_concat")([x, skip])
        x = conv_block(x, decoder_width * 2**level, f"decoder{level}")
    # The last layer stays float32 under mixed precision so that the loss is computed in float32.
    activation = "sigmoid" if outputs == 1 else "softmax"
    x = layers.Conv2D(outputs, 1, activation=activation, dtype="float32", name="mask")(x)
    return keras.Model(inputs, [x, head(bottleneck)] if head else x, name=f"unet_{name}")


def encoder_of(model):
    """The nested model holding the backbone's layers: the part that freeze (un)freezes."""
    return model.get_layer(ENCODER)


def freeze(model, frozen=True):
    """Freeze (or unfreeze) the encoder of a model from build, e.g. to warm the decoder up for
    a few epochs. Frozen BatchNormalization layers run in inference mode, keeping the
    backbone's statistics. Compile again afterwards, with a new optimizer: Keras fixes the
    trainable variables when it compiles."""
    encoder_of(model).trainable = not frozen
