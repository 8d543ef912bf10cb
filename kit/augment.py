"""Augmentation of training batches, drawn with stateless ops from (seed, step) alone: the
same seed gives the same batch whatever ran before, so a resumed training sees exactly what an
uninterrupted one would have. Geometric changes move image and mask together (the mask with
nearest-neighbour sampling, so that it keeps its labels); photometric ones touch the image."""

import math

from kit.cli import import_tensorflow

tf = import_tensorflow()
from keras import ops  # noqa: E402


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
    # Output pixel (x, y) samples the input at centre + scale * rotation(flip(x, y) - centre) +
    # shift.
    a0, a1 = scale * tf.cos(angle) * flip, -scale * tf.sin(angle)
    b0, b1 = scale * tf.sin(angle) * flip, scale * tf.cos(angle)
    zeros = tf.zeros_like(a0)
    transform = tf.stack([
        a0, a1, cx + shift * w * draws[2] - a0 * cx - a1 * cy, b0, b1,
        cy + shift * h * draws[3] - b0 * cx - b1 * cy, zeros, zeros
    ], axis=1)
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
    rows, cols = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32),
                             indexing="ij")
    batch = tf.broadcast_to(tf.cast(tf.range(n), tf.float32)[:, None, None], (n, h, w))
    coords = tf.stack([batch, rows + field[..., 0], cols + field[..., 1]])

    def warp(x, order):  # per channel: map_coordinates samples one array at a time
        return tf.stack([
            ops.image.map_coordinates(x[..., c], coords, order, "reflect")
            for c in range(x.shape[-1])
        ], axis=-1)

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
