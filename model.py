"""The U-Net, its losses, its metric and its augmentation: change the model here, and only here."""

import math

import common

tf = common.import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import keras
from keras import layers, ops

SMOOTH = 1.0


# ---------------------------------------------------------------- the network

def conv_block(x, filters, batchnorm):
    for _ in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batchnorm)(x)
        if batchnorm:
            x = layers.BatchNormalization(momentum=0.9)(x)   # 0.99 lags on small datasets
        x = layers.Activation("relu")(x)
    return x


def build_unet(image_size, channels=1, classes=1, width=16, depth=4, dropout=0.1,
               batchnorm=True, mean=0.0, std=1.0):
    """U-Net taking raw pixel values: the normalisation statistics live inside the model."""
    inputs = keras.Input((*image_size, channels))
    x = layers.Normalization(mean=mean, variance=std ** 2)(inputs)
    skips = []
    for level in range(depth):
        x = conv_block(x, width * 2 ** level, batchnorm)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = conv_block(x, width * 2 ** depth, batchnorm)
    if dropout:
        x = layers.SpatialDropout2D(dropout)(x)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(width * 2 ** level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = conv_block(x, width * 2 ** level, batchnorm)
    # The last layer stays float32 under mixed precision so that the loss is computed in float32.
    activation = "sigmoid" if classes == 1 else "softmax"
    outputs = layers.Conv2D(classes, 1, activation=activation, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="unet")


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
    return ops.mean(keras.losses.binary_crossentropy(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")))


def bce_dice_loss(y_true, y_pred):
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


LOSSES = {"dice": dice_loss, "bce": bce_loss, "bce_dice": bce_dice_loss, "jaccard": jaccard_loss,
          "tversky": tversky_loss, "focal_tversky": focal_tversky_loss}


# Label masks (softmax over background + K classes) train on one-hot targets.

def cce_loss(y_true, y_pred):
    return ops.mean(keras.losses.categorical_crossentropy(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")))


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
    return ops.mean(ops.stack([dice_loss(y_true[..., c], y_pred[..., c]) for c in range(1, classes)]))


def cce_dice_loss(y_true, y_pred):
    return cce_loss(y_true, y_pred) + multiclass_dice_loss(y_true, y_pred)


CATEGORICAL_LOSSES = {"cce": cce_loss, "multiclass_dice": multiclass_dice_loss, "cce_dice": cce_dice_loss}
# The binary losses' categorical counterparts, so that a loss flag works for both kinds of mask.
CATEGORICAL_COUNTERPART = {"bce": "cce", "dice": "multiclass_dice", "bce_dice": "cce_dice"}


def loss_for(name, classes, class_weights=None):
    """The loss function called `name` for binary masks (classes 1) or label masks (classes > 1)."""
    if classes == 1:
        if name not in LOSSES:
            raise common.UserError(f"--loss {name} needs label masks (data.py --classes K with K > 1): "
                                   f"choose one of {', '.join(LOSSES)}")
        return LOSSES[name]
    name = CATEGORICAL_COUNTERPART.get(name, name)
    if name == "weighted_cce":
        return weighted_cce(class_weights)
    if name not in CATEGORICAL_LOSSES:
        raise common.UserError(f"--loss {name} is for binary masks: with {classes} classes choose one of "
                               f"{', '.join([*CATEGORICAL_LOSSES, 'weighted_cce'])}")
    return CATEGORICAL_LOSSES[name]


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
        dice = ops.where(total == 0, 1.0, 2 * inter / ops.maximum(total, 1.0))
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
        dice = ops.where(total == 0, 1.0, 2 * inter / ops.maximum(total, 1.0))
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0] * (classes - 1), "float32"))


def dice_metric(classes):
    return DiceScore() if classes == 1 else MulticlassDiceScore()


# ---------------------------------------------------------------- augmentation

def geometric(images, masks, seed, rotation=0.03, shift=0.08, zoom=0.12):
    """Random flip, rotation (in turns), shift and zoom (fractions of the size) of each image and
    its mask together, the mask with nearest-neighbour sampling so that it stays binary.

    Drawn with stateless ops from `seed` alone: the same seed gives the same batch whatever ran
    before, so a resumed training sees exactly what an uninterrupted one would have."""
    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    draws = tf.random.stateless_uniform((5, shape[0]), seed, -1, 1)
    angle = draws[0] * rotation * 2 * math.pi
    scale = 1 + zoom * draws[1]
    flip = tf.where(draws[4] < 0, -1.0, 1.0)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Output pixel (x, y) samples the input at centre + scale * rotation(flip(x, y) - centre) + shift.
    a0, a1 = scale * tf.cos(angle) * flip, -scale * tf.sin(angle)
    b0, b1 = scale * tf.sin(angle) * flip, scale * tf.cos(angle)
    zeros = tf.zeros_like(a0)
    transform = tf.stack([a0, a1, cx + shift * w * draws[2] - a0 * cx - a1 * cy,
                          b0, b1, cy + shift * h * draws[3] - b0 * cx - b1 * cy, zeros, zeros], axis=1)
    images = ops.image.affine_transform(images, transform, "bilinear", fill_mode="reflect")
    masks = ops.image.affine_transform(masks, transform, "nearest", fill_mode="reflect")
    return images, masks


def elastic(images, masks, seed, strength=0.02, grid=4):
    """Smooth random warp of each image and its mask together: a coarse grid of random offsets
    (strength: their scale, a fraction of the size) interpolated to every pixel. Stateless too."""
    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    offsets = tf.random.stateless_normal((n, grid, grid, 2), seed) * strength
    field = tf.image.resize(offsets, (h, w), "bicubic") * tf.cast(tf.stack([h, w]), tf.float32)
    rows, cols = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    batch = tf.broadcast_to(tf.cast(tf.range(n), tf.float32)[:, None, None], (n, h, w))
    coords = tf.stack([batch, rows + field[..., 0], cols + field[..., 1]])

    def warp(x, order):   # per channel: map_coordinates samples one array at a time
        return tf.stack([ops.image.map_coordinates(x[..., c], coords, order, "reflect")
                         for c in range(x.shape[-1])], axis=-1)

    return warp(images, 1), warp(masks, 0)


def photometric(images, seed):
    """Brightness, contrast, gamma and multiplicative speckle noise, on the image only (0..255)."""
    n = tf.shape(images)[0]
    draws = tf.random.stateless_uniform((4, n, 1, 1, 1), seed, -1, 1)
    x = images / 255.0
    x = tf.pow(tf.clip_by_value(x, 0, 1), tf.exp(0.25 * draws[0]))
    mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * (1 + 0.2 * draws[1]) + mean + 0.08 * draws[2]
    noise = tf.random.stateless_normal(tf.shape(x), seed + 1) * 0.08 * (draws[3] + 1) / 2
    return tf.clip_by_value(x * (1 + noise), 0, 1) * 255.0


def make_augmenter(seed):
    """augment(step, images, masks): geometric changes of both, photometric ones of the images,
    all drawn from (seed, step) alone (see geometric)."""

    def augment(step, images, masks):
        key = tf.stack([tf.cast(step, tf.int64), tf.constant(seed, tf.int64)])
        images, masks = geometric(images, masks, key + [0, 2**32])
        images, masks = elastic(images, masks, key + [0, 2 * 2**32])
        return photometric(images, key), masks

    return augment
