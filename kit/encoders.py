"""Encoders for the U-Net: keras.applications backbones, with or without their ImageNet
weights, as features at strides 2 to 32 (kit/model.py builds the decoder on them).

They take raw pixel values 0..255 and apply the backbone's own preprocessing inside the model,
so the image size and the normalisation travel with the saved .keras file.
"""

import os
import warnings
from collections import namedtuple

from kit.cli import import_tensorflow
from kit.recipe import ENCODER_STRIDE, weights_hint

import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

STRIDE = ENCODER_STRIDE  # every backbone halves the size 5 times: the working size is a multiple
ENCODER = "encoder"  # the nested model that holds the backbone's layers (see freeze)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# constructor: the keras.applications function, called with include_top=False.
# skips: the last layers at strides 2, 4, 8 and 16; the backbone's output is the stride-32
#   bottleneck, so that every layer of the no-top weights file is part of the model.
# preprocessing: the mode of the family's keras.applications preprocess_input:
#   "tf" scales to [-1, 1], "caffe" turns RGB into BGR and subtracts the ImageNet mean,
#   "none" leaves 0..255 to the backbone (EfficientNetV2's include_preprocessing).
# (The no-top weights file keras.applications downloads for each: kit/recipe.py's ENCODERS.)
Encoder = namedtuple("Encoder", "constructor skips preprocessing")

ENCODERS = {
    "mobilenetv2": Encoder(
        keras.applications.MobileNetV2,
        # The expansions before each strided depthwise convolution, as in the TensorFlow
        # segmentation tutorial: the block outputs themselves are narrow linear bottlenecks.
        ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"
         ),
        "tf"),
    "efficientnetv2b0": Encoder(
        keras.applications.EfficientNetV2B0,
        ("block1a_project_activation", "block2b_add", "block3b_add", "block5e_add"), "none"),
    "resnet50": Encoder(keras.applications.ResNet50,
                        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
                        "caffe"),
}


class EncoderWeightsError(ValueError):
    """A weights file that is missing or does not fit the backbone: one line, naming the file."""


def _weights_error(path, name, problem):
    problem = " ".join(str(problem).split())  # Keras' own messages span several lines
    if len(problem) > 300:
        problem = problem[:300] + "..."
    return EncoderWeightsError(f"{path} {problem}: {weights_hint(name)}")


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


def features(name, inputs, weights=None):
    """The backbone `name` (a key of ENCODERS) on raw `inputs` (1 or 3 channels): its features at
    strides 2, 4, 8 and 16, and the stride-32 bottleneck. weights: as for build_encoder."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}")
    return build_encoder(name, inputs.shape[1:3], weights)(preprocess(name, inputs))


def encoder_of(model):
    """The nested model holding the backbone's layers: the part that freeze (un)freezes."""
    return model.get_layer(ENCODER)


def freeze(model, frozen=True):
    """Freeze (or unfreeze) the encoder of a model.encoder_unet, e.g. to warm the decoder up for
    a few epochs. Frozen BatchNormalization layers run in inference mode, keeping the
    backbone's statistics. Compile again afterwards, with a new optimizer: Keras fixes the
    trainable variables when it compiles."""
    encoder_of(model).trainable = not frozen
