"""The U-Net, its losses and its metric: change the model here, and only here."""

import logging

from kit import encoders, metrics
from kit.recipe import loss_name
from kit.recipe import stride as stride_rule
from kit.cli import import_tensorflow
from kit.files import UserError

tf = import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

log = logging.getLogger(__name__)

SMOOTH = 1.0
MASK, PRESENCE = "mask", "presence"  # the outputs of a model with a presence head (--gate)

# ---------------------------------------------------------------- the network


def build(recipe, size, channels, classes, mean=0.0, std=1.0, encoder_weights=None):
    """The recipe's network at `size` (H, W): the kit's U-Net, or with --encoder a U-Net on that
    backbone (encoder_weights: its initial weights, a file, "imagenet" or None for random).
    classes: 1 for binary masks (a sigmoid), K for labels 1..K (a softmax over K + 1)."""
    if recipe.encoder != "none":
        return encoder_unet(recipe.encoder, size, channels, classes, encoder_weights,
                            recipe.width, recipe.gate)
    return build_unet(size, channels, classes, recipe.width, recipe.depth, recipe.dropout,
                      recipe.batchnorm, mean, std, recipe.gate)


def conv_block(x, filters, batchnorm=True, name=None):
    """Two 3x3 convolutions, each with batch normalisation and ReLU."""
    for i in (1, 2):
        named = (lambda part: f"{name}_{part}{i}") if name else (lambda part: None)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batchnorm,
                          name=named("conv"))(x)
        if batchnorm:
            # 0.99 lags on small datasets
            x = layers.BatchNormalization(momentum=0.9, name=named("bn"))(x)
        x = layers.Activation("relu", name=named("relu"))(x)
    return x


def build_unet(image_size, channels=1, classes=1, width=16, depth=4, dropout=0.1, batchnorm=True,
               mean=0.0, std=1.0, gate=False):
    """The kit's U-Net, taking raw pixel values: the normalisation statistics live inside the
    model. gate: a second output, the probability that the image holds any foreground."""
    inputs = keras.Input((*image_size, channels))
    x = layers.Normalization(mean=mean, variance=std**2)(inputs)
    skips = []
    for level in range(depth):
        x = conv_block(x, width * 2**level, batchnorm)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = conv_block(x, width * 2**depth, batchnorm)
    if dropout:
        x = layers.SpatialDropout2D(dropout)(x)
    bottleneck = x
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(width * 2**level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = conv_block(x, width * 2**level, batchnorm)
    return keras.Model(inputs, heads(x, bottleneck, classes, gate), name="unet")


def encoder_unet(name, image_size, channels=1, classes=1, weights=None, width=16, gate=False):
    """A U-Net whose encoder is the keras.applications backbone `name` (kit/encoders.py),
    taking raw pixel values 0..255; both sides of image_size multiples of its stride. Each
    decoder level works at stride 2**k: upsample, join the encoder's features of that stride
    (none at full size), convolve."""
    if any(side % encoders.STRIDE for side in image_size):
        raise ValueError(f"image size {tuple(image_size)} of encoder {name}: "
                         f"both sides must be multiples of {encoders.STRIDE}")
    inputs = keras.Input((*image_size, channels))
    *skips, x = encoders.features(name, inputs, weights)
    bottleneck = x
    for level, skip in reversed(list(enumerate([None, *skips]))):
        x = layers.UpSampling2D(interpolation="bilinear", name=f"decoder{level}_up")(x)
        if skip is not None:
            x = layers.Concatenate(name=f"decoder{level}_concat")([x, skip])
        x = conv_block(x, width * 2**level, name=f"decoder{level}")
    return keras.Model(inputs, heads(x, bottleneck, classes, gate), name=f"unet_{name}")


def heads(x, bottleneck, classes, gate):
    """The outputs: the mask (one sigmoid channel for binary masks, a softmax over background
    + K classes for labels) and, with gate, the presence. float32 under mixed precision, so
    that the loss is computed in float32."""
    activation = "sigmoid" if classes == 1 else "softmax"
    mask = layers.Conv2D(outputs_for(classes), 1, activation=activation, dtype="float32",
                         name=MASK)(x)
    return [mask, presence_head(bottleneck)] if gate else mask


def presence_head(bottleneck):
    """train.py --gate: "is there anything in this image", from the deepest features, where
    each pixel sees the most context. Trained with cross-entropy beside the mask; a frame it
    calls empty is emptied (kit/inference.py)."""
    pooled = layers.GlobalAveragePooling2D(name="presence_pool")(bottleneck)
    return layers.Dense(1, activation="sigmoid", dtype="float32", name=PRESENCE)(pooled)


# ---------------------------------------------------------------- losses
# Overlap losses are taken over the whole batch, as in the 2017 tutorial: per-image
# versions are undefined on the many empty frames.


def overlaps(y_true, y_pred):
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    tp = ops.sum(y_true * y_pred)
    return tp, ops.sum(y_pred) - tp, ops.sum(y_true) - tp


def dice_loss(y_true, y_pred):
    tp, fp, fn = overlaps(y_true, y_pred)
    return 1 - (2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH)


def jaccard_loss(y_true, y_pred):
    tp, fp, fn = overlaps(y_true, y_pred)
    return 1 - (tp + SMOOTH) / (tp + fp + fn + SMOOTH)


def tversky_index(y_true, y_pred, alpha=0.7):
    """alpha > 0.5 weighs missed nerve pixels above false alarms."""
    tp, fp, fn = overlaps(y_true, y_pred)
    return (tp + SMOOTH) / (tp + alpha * fn + (1 - alpha) * fp + SMOOTH)


def tversky_loss(y_true, y_pred):
    return 1 - tversky_index(y_true, y_pred)


def focal_tversky_loss(y_true, y_pred, gamma=0.75):
    return ops.power(1 - tversky_index(y_true, y_pred), gamma)


def bce_loss(y_true, y_pred):
    return ops.mean(
        keras.losses.binary_crossentropy(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")))


def bce_dice_loss(y_true, y_pred):
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


def focal_loss(y_true, y_pred, gamma=2.0):
    """The focal loss (Lin et al. 2017) with gamma 2, unweighted: cross-entropy scaled by
    (1 - p_t)^gamma, so that the many easy background pixels count less."""
    return ops.mean(keras.losses.binary_focal_crossentropy(
        ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"), gamma=gamma))


def bce_dice_focal_loss(y_true, y_pred):
    return bce_dice_loss(y_true, y_pred) + focal_loss(y_true, y_pred)


# The Lovász losses (Berman, Rannen Triki and Blaschko 2018, "The Lovász-Softmax loss"): the
# Lovász extension of the Jaccard loss, a convex surrogate that sorts the pixels' errors and
# weighs them by the Jaccard loss's increments (as their reference lovasz_losses.py does).
LOGIT_EPSILON = 1e-6  # the clip before the logit: |logit| <= 13.8


def lovasz_rows(errors, labels):
    """Each row's Lovász extension of the Jaccard loss at `errors` (rows, pixels), for the
    truth `labels` (0 or 1). A row without foreground gives its largest error, as in the
    reference (its Jaccard increments are then 1 for the first pixel, 0 after)."""
    order = ops.argsort(-errors, axis=-1)
    errors = ops.take_along_axis(errors, order, axis=-1)
    labels = ops.take_along_axis(labels, order, axis=-1)
    total = ops.sum(labels, axis=-1, keepdims=True)
    intersection = total - ops.cumsum(labels, axis=-1)
    union = total + ops.cumsum(1 - labels, axis=-1)
    jaccard = 1 - intersection / union
    grad = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    return ops.sum(errors * ops.stop_gradient(grad), axis=-1)


def lovasz_hinge(labels, logits):
    """The Lovász hinge per image, averaged over the batch (the reference's per_image=True):
    `logits` and binary `labels` of shape (batch, ...). An image with no foreground costs its
    worst false alarm, the hinge 1 + logit of its highest pixel, as in the reference."""
    batch = ops.shape(logits)[0]
    logits = ops.reshape(ops.cast(logits, "float32"), (batch, -1))
    labels = ops.reshape(ops.cast(labels, "float32"), (batch, -1))
    # The reference sorts the errors, then hinges them: the hinge keeps their order, and the
    # pixels it sets to 0 come last either way, so hinging first gives the same loss.
    errors = ops.relu(1 - logits * (2 * labels - 1))
    return ops.mean(lovasz_rows(errors, labels))


def lovasz_loss(y_true, y_pred):
    """The Lovász hinge for binary masks. It expects logits, and the kit's model gives sigmoid
    probabilities: they are clipped to [1e-6, 1 - 1e-6] and turned back into logits, so that a
    pixel beyond |logit| 13.8 gets no gradient."""
    p = ops.clip(ops.cast(y_pred, "float32"), LOGIT_EPSILON, 1 - LOGIT_EPSILON)
    return lovasz_hinge(y_true, ops.log(p) - ops.log(1 - p))


BINARY_LOSSES = {
    "dice": dice_loss,
    "bce": bce_loss,
    "bce_dice": bce_dice_loss,
    "jaccard": jaccard_loss,
    "tversky": tversky_loss,
    "focal_tversky": focal_tversky_loss,
    "lovasz": lovasz_loss,
    "bce_dice_focal": bce_dice_focal_loss,
}

# Label masks (softmax over background + K classes) train on one-hot targets.


def cce_loss(y_true, y_pred):
    return ops.mean(
        keras.losses.categorical_crossentropy(ops.cast(y_true, "float32"),
                                              ops.cast(y_pred, "float32")))


def weighted_cce(class_weights):
    """Cross-entropy with each pixel weighted by its true class (rare classes count more)."""
    weights = ops.convert_to_tensor(class_weights, "float32")

    def weighted_cce_loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        per_pixel = keras.losses.categorical_crossentropy(y_true, ops.cast(y_pred, "float32"))
        return ops.mean(per_pixel * ops.sum(y_true * weights, axis=-1))

    return weighted_cce_loss


def multiclass_dice_loss(y_true, y_pred):
    """Mean over the foreground classes of the batch-wide soft Dice loss."""
    classes = y_pred.shape[-1]
    return ops.mean(
        ops.stack([dice_loss(y_true[..., c], y_pred[..., c]) for c in range(1, classes)]))


def cce_dice_loss(y_true, y_pred):
    return cce_loss(y_true, y_pred) + multiclass_dice_loss(y_true, y_pred)


def lovasz_softmax_loss(y_true, y_pred):
    """The Lovász-softmax (the reference's defaults: over the whole batch, classes='present'):
    for each class present in the batch's truth, background included, the Lovász extension of
    its Jaccard loss at the errors |truth - probability|; the mean over those classes."""
    classes = y_pred.shape[-1]
    y_true = ops.transpose(ops.reshape(ops.cast(y_true, "float32"), (-1, classes)))
    y_pred = ops.transpose(ops.reshape(ops.cast(y_pred, "float32"), (-1, classes)))
    per_class = lovasz_rows(ops.abs(y_true - y_pred), y_true)
    present = ops.cast(ops.sum(y_true, axis=-1) > 0, "float32")
    return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)


# Each a function of the class weights (median-frequency balancing, kit/dataset.py): only
# weighted_cce uses them.
CATEGORICAL_LOSSES = {
    "cce": lambda _: cce_loss,
    "multiclass_dice": lambda _: multiclass_dice_loss,
    "cce_dice": lambda _: cce_dice_loss,
    "weighted_cce": weighted_cce,
    "lovasz_softmax": lambda _: lovasz_softmax_loss,
}


def loss_for(name, classes, class_weights=None):
    """The loss function called `name` for binary masks (classes 1) or label masks (classes > 1)."""
    if classes == 1:
        if name not in BINARY_LOSSES:
            raise UserError(f"--loss {name} needs label masks (data.py --classes K with K > 1): "
                            f"choose one of {', '.join(BINARY_LOSSES)}")
        return BINARY_LOSSES[name]
    name = loss_name(name, classes)
    if name not in CATEGORICAL_LOSSES:
        raise UserError(f"--loss {name} is for binary masks: with {classes} classes choose one "
                        f"of {', '.join(CATEGORICAL_LOSSES)}")
    return CATEGORICAL_LOSSES[name](class_weights)


# ---------------------------------------------------------------- the metric


class DiceScore(keras.metrics.Metric):
    """The competition's score: mean over images of hard Dice, 1 where both masks are empty."""

    def __init__(self, threshold=0.5, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        axes = tuple(range(1, len(y_pred.shape)))
        truth = ops.cast(y_true > 0.5, "float32")
        pred = ops.cast(ops.cast(y_pred, "float32") > self.threshold, "float32")
        inter = ops.sum(truth * pred, axis=axes)
        total = ops.sum(truth, axis=axes) + ops.sum(pred, axis=axes)
        dice = metrics.dice_from_counts(inter, total, ops)
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0], "float32"))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class MulticlassDiceScore(DiceScore):
    """DiceScore for label masks: per-image hard Dice of each foreground class (1 where the class
    is absent from both), averaged over images and classes."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        classes = y_pred.shape[-1]
        truth = ops.one_hot(ops.argmax(y_true, axis=-1), classes)
        pred = ops.one_hot(ops.argmax(y_pred, axis=-1), classes)
        inter = ops.sum(truth * pred, axis=(1, 2))[:, 1:]
        total = (ops.sum(truth, axis=(1, 2)) + ops.sum(pred, axis=(1, 2)))[:, 1:]
        dice = metrics.dice_from_counts(inter, total, ops)
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0] * (classes - 1), "float32"))


def dice_metric(classes):
    return DiceScore() if classes == 1 else MulticlassDiceScore()


# ---------------------------------------------------------------- what a model holds


def outputs_for(classes):
    """Output channels: one sigmoid for binary masks, a softmax over background + K classes."""
    return 1 if classes == 1 else classes + 1


def mask_shape(model):
    """(None, h, w, channels) of the mask output, whether or not a presence head follows it."""
    return tuple(model.output_shape[0] if has_presence(model) else model.output_shape)


def has_presence(model):
    """Whether the model has the presence head of train.py --gate as its second output (Keras
    gives a list of shapes for a model of several outputs, one shape otherwise)."""
    return isinstance(model.output_shape, list)


def classes_of(model):
    """Foreground classes a saved model predicts: the output channels say it, nothing else."""
    outputs = mask_shape(model)[-1]
    return 1 if outputs == 1 else outputs - 1


def depth_of(model):
    return sum(isinstance(layer, layers.MaxPooling2D) for layer in model.layers)


def stride_of(model):
    """What the sides of the model's input must be multiples of (kit/recipe.py's rule): a U-Net
    on a backbone has no MaxPooling2D of its own."""
    return stride_rule(any(layer.name == encoders.ENCODER for layer in model.layers),
                         depth_of(model))


def load_initial_weights(model, path):
    """Weights of another run (another data set, size, number of classes or channels): layers
    whose shapes fit are loaded in order, the rest keep their fresh start. The normalisation
    statistics are constants of the model, not weights: they stay this data set's."""
    if not path.exists():
        raise UserError(
            f"--weights {path} not found: give a .weights.h5 or .keras file (nothing is downloaded)"
        )
    before = [w.copy() for w in model.get_weights()]
    try:
        model.load_weights(path, skip_mismatch=True)
    except (OSError, ValueError) as e:
        raise UserError(f"--weights {path} cannot be loaded ({str(e).splitlines()[0][:120]}): "
                        f"give a .weights.h5 or .keras file saved by Keras 3") from None
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    if not changed:
        raise UserError(
            f"--weights {path}: no layer fits this network: use weights of the same architecture")
    log.info(f"initial weights from {path}: {changed} of {len(before)} weight tensors changed "
             f"(layers of other shapes start fresh)")


def receptive_field(depth, convs=2):
    """Width of the widest window of input pixels that one output pixel of the U-Net sees.

    Follows an interval of pixels back through the layers: a 3x3 convolution widens it by one
    pixel each side, a 2x2 pooling doubles it, a 2x2 stride-2 transposed convolution halves it;
    a skip connection joins the encoder's interval to the deeper path's. The halving rounds to
    whole pixels, so the field depends on the pixel's position modulo 2^depth: the widest is
    returned."""

    def encoder(level, lo, hi):  # interval at the output of encoder block `level` -> the input
        lo, hi = lo - convs, hi + convs
        return (lo, hi) if level == 0 else encoder(level - 1, 2 * lo, 2 * hi + 1)

    def decoder(level, lo, hi):  # interval at the output of decoder block `level`
        if level == depth:
            return encoder(depth, lo, hi)
        lo, hi = lo - convs, hi + convs
        (a, b), (c, d) = encoder(level, lo, hi), decoder(level + 1, lo // 2, hi // 2)
        return min(a, c), max(b, d)

    return max(hi - lo + 1 for lo, hi in (decoder(0, x, x) for x in range(2**depth)))
