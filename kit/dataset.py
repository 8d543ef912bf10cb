"""Training data: the frames data.py wrote, subject-grouped folds, and the tf.data pipelines
that feed model.fit (whole images at the working size, or random patches of large images)."""

import dataclasses
import logging
import math
import os

import numpy as np

from kit import arrays
from kit.augment import make_augmenter
from kit.cli import import_tensorflow
from kit.images import resize_stack
from kit.model import MASK, PRESENCE

tf = import_tensorflow()
log = logging.getLogger(__name__)
# Batches prepared at once, and ready ahead. Fixed, not tf.data.AUTOTUNE: the autotuning thread
# of a finished fit's pipeline once held up the end of a fold for 15-45 s as it was freed.
PARALLEL_BATCHES = min(4, os.cpu_count() or 1)
READY_BATCHES = 2


@dataclasses.dataclass
class Frames:
    """The training set as data.py wrote it: images, masks, subjects, each image's own (H, W)
    (mixed: the images were of several sizes, padded onto one canvas), and the masks' classes."""

    images: np.ndarray
    masks: np.ndarray
    subjects: np.ndarray
    sizes: np.ndarray
    mixed: bool
    classes: int

    @property
    def channels(self):
        return self.images.shape[3] if self.images.ndim == 4 else 1

    def median_size(self):
        return tuple(int(n) for n in np.median(self.sizes, axis=0))

    def fingerprint(self):
        """What identifies these arrays for --resume and in the model's config.json."""
        return arrays.training_fingerprint(self.images, self.masks, self.classes)


def load_frames(work):
    images, masks, subjects = arrays.load_training_set(work)
    sizes = arrays.load_sizes(work, "train", len(images))  # None: one size
    own = sizes if sizes is not None else np.tile(images.shape[1:3], (len(images), 1))
    return Frames(images, masks, subjects, own, sizes is not None, arrays.load_classes(work))


@dataclasses.dataclass
class Working:
    """The frames as the network sees them: x, y at the working size (for --patch, as they
    are), their pixel statistics, and the scale from the original size to the working one."""

    x: np.ndarray
    y: np.ndarray
    mean: float
    std: float
    scale: list


def to_working_size(frames, size, patch):
    """Images and masks at the working `size`; with `patch`, as they are (the patches are cut
    while training)."""
    if patch:
        return Working(frames.images, frames.masks, *pixel_statistics(frames.images,
                                                                      frames.sizes), [1.0, 1.0])
    crop = frames.sizes if frames.mixed else None
    x = resize_stack(frames.images, size, "area", crop=crop)
    y = resize_masks(frames.masks, size, frames.classes, crop)
    scale = (np.array(size) / np.median(frames.sizes, axis=0)).round(6).tolist()
    return Working(x, y, float(x.mean()), float(x.std()) or 1.0, scale)


def fixed_pipeline(ds):
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(READY_BATCHES).with_options(options)


def subject_folds(subjects, k, seed):
    """Fold index of every frame; frames of one subject always share a fold."""
    unique, counts = np.unique(subjects, return_counts=True)
    if len(unique) < k:
        # Consecutive frames are near-duplicates: contiguous blocks are the next best split.
        log.warning(f"{len(unique)} subject(s) cannot make {k} subject-grouped folds: "
                    f"validating on blocks of consecutive frames instead")
        return np.arange(len(subjects)) * k // len(subjects)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    sizes = np.zeros(k)
    fold_of = {}
    for i in sorted(order, key=lambda i: -counts[i]):  # largest subjects first: balanced folds
        fold = int(np.argmin(sizes))
        fold_of[unique[i]] = fold
        sizes[fold] += counts[i]
    return np.array([fold_of[s] for s in subjects])


def steps_per_epoch(n, batch_size, drop_remainder):
    batch_size = min(batch_size, n)
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def dataset(images, masks, batch_size, seed=0, epochs=range(1), classes=1, shuffle=False,
            augment=False, presence=False):
    """The batches of every epoch in `epochs`, one epoch after the other. Each epoch is
    shuffled and augmented from (seed, epoch, step) alone, with stateless ops: a resumed run
    sees exactly the batches an uninterrupted one would have. Augmented epochs drop the last,
    partial batch. presence: the targets of a model with a presence head (see with_presence)."""
    n = len(images)
    batch_size = min(batch_size, n)
    steps = steps_per_epoch(n, batch_size, augment)
    x = tf.constant(images[..., None] if images.ndim == 3 else images)
    y = tf.constant(masks[..., None])
    augmenter = make_augmenter(seed)

    def one_epoch(epoch):
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.argsort(tf.random.stateless_uniform([n], key)) if shuffle else tf.range(n)
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size,
                                                                  drop_remainder=augment)
        steps_of_epoch = tf.data.Dataset.range(epoch * steps, (epoch + 1) * steps)
        return tf.data.Dataset.zip((steps_of_epoch, batches))

    def load(step, index):
        images = tf.cast(tf.gather(x, index), tf.float32)
        masks = targets(tf.gather(y, index), classes)
        images, masks = augmenter(step, images, masks) if augment else (images, masks)
        return images, with_presence(masks) if presence else masks

    ds = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(one_epoch)
    # flat_map hides the length from Keras: say it
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(epochs) * steps))
    return fixed_pipeline(ds.map(load, num_parallel_calls=PARALLEL_BATCHES))


def targets(masks, classes):
    """Binary masks as they are, label masks one-hot (so that augmentation may blend them)."""
    if classes == 1:
        return tf.cast(masks, tf.float32)
    return tf.one_hot(tf.cast(masks[..., 0], tf.int32), classes + 1)


def with_presence(masks):
    """The targets of train.py --gate: the masks, and whether each holds any foreground once
    augmented (a shift or zoom may take a small nerve out of the frame)."""
    present = tf.cast(tf.reduce_max(masks, axis=[1, 2, 3]) > 0, tf.float32)[:, None]
    return {MASK: masks, PRESENCE: present}


def batches(ds, batch_size, seed, classes):
    """Augmented batches of an endless stream of patches: each batch's augmentation is drawn
    from its own step number, so that no two batches of the run share flips or elastic
    fields."""
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), targets(y, classes)))
    augmenter = make_augmenter(seed)
    ds = ds.enumerate().map(lambda i, xy: augmenter(i, *xy), num_parallel_calls=PARALLEL_BATCHES)
    return fixed_pipeline(ds)


def resize_masks(masks, size, classes, sizes=None):
    """Masks at the working size: area-averaging 0/1 then rounding is a majority vote; label
    masks take the class with the largest area-averaged share of each working pixel."""
    if classes == 1:
        return resize_stack(masks, size, "area", crop=sizes)
    shares = [
        resize_stack((np.asarray(masks) == c).view(np.uint8) * np.uint8(255), size, "area",
                     crop=sizes) for c in range(classes + 1)
    ]
    return np.argmax(np.stack(shares, axis=-1), axis=-1).astype(np.uint8)


def class_weights(masks, classes, sizes=None):
    """Median-frequency balancing of label masks: each class weighs median frequency / its
    frequency (for weighted_cce). sizes: count each mask's own part only."""
    if classes == 1:
        return None
    counts = np.zeros(classes + 1)
    for i, mask in enumerate(masks):
        own = mask if sizes is None else mask[:sizes[i][0], :sizes[i][1]]
        counts += np.bincount(np.asarray(own).ravel(), minlength=classes + 1)[:classes + 1]
    freq = counts / counts.sum()
    return (np.where(freq > 0,
                     np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 1.0).round(4).tolist())


def crop_patch(image, mask, size, patch, y, x):
    """A patch x patch crop of an image's own part (size: its H, W), mirrored where the image is
    smaller."""
    h, w = size
    image, mask = (image[y:min(h, y + patch), x:min(w, x + patch)], mask[y:min(h, y + patch),
                                                                         x:min(w, x + patch)])
    pad = [(0, patch - image.shape[0]), (0, patch - image.shape[1])]
    if pad[0][1] or pad[1][1]:
        image = np.pad(image, pad + [(0, 0)] * (image.ndim - 2), mode="symmetric")
        mask = np.pad(mask, pad, mode="symmetric")
    return image, mask


def patches_per_epoch(sizes, patch, batch_size):
    """Patches of an epoch: as many as the images hold pixels, in whole batches."""
    return max(batch_size, int(sizes.prod(1).sum() // patch**2) // batch_size * batch_size)


def random_patches(images, masks, sizes, patch, batch_size, seed, classes):
    """Endless random patches, an epoch's worth as many as the images hold pixels (patches of
    large images are drawn more often), each epoch new ones."""
    areas = sizes.prod(1).astype(float)
    rng = np.random.default_rng(seed)

    def generate():
        while True:
            i = rng.choice(len(images), p=areas / areas.sum())
            h, w = sizes[i]
            y, x = rng.integers(0, max(1, h - patch + 1)), rng.integers(0, max(1, w - patch + 1))
            image, mask = crop_patch(images[i], masks[i], sizes[i], patch, y, x)
            yield image[..., None] if image.ndim == 2 else image, mask[..., None]

    channels = images.shape[3] if images.ndim == 4 else 1
    ds = tf.data.Dataset.from_generator(
        generate, output_signature=(tf.TensorSpec(
            (patch, patch, channels), tf.uint8), tf.TensorSpec((patch, patch, 1), tf.uint8)))
    return batches(ds, batch_size, seed, classes)


def grid_patches(images, masks, sizes, patch):
    """Every image cut into patches that cover it (the last row and column aligned to its end)."""
    xs, ys = [], []
    for image, mask, (h, w) in zip(images, masks, sizes):
        for y in sorted({*range(0, max(1, h - patch + 1), patch), max(0, h - patch)}):
            for x in sorted({*range(0, max(1, w - patch + 1), patch), max(0, w - patch)}):
                a, b = crop_patch(image, mask, (h, w), patch, y, x)
                xs.append(a)
                ys.append(b)
    return np.stack(xs), np.stack(ys)


def pixel_statistics(images, sizes, most=200):
    """Mean and standard deviation of the pixels of (up to `most`) images' own parts."""
    step = max(1, len(images) // most)
    pixels = np.concatenate([
        np.asarray(images[i, :h:2, :w:2], np.float32).ravel()
        for i, (h, w) in list(enumerate(sizes))[::step]
    ])
    return float(pixels.mean()), float(pixels.std()) or 1.0


def fold_datasets(recipe, plan, fold, train, val, epochs):
    """Training batches of the `epochs` (a range), validation batches, steps per epoch.
    train, val: (images, masks, own sizes) at the working size (for --patch, as they are)."""
    (x, y, sizes), (val_x, val_y, val_sizes) = train, val
    seed, batch, gate = recipe.seed + fold, recipe.batch_size, recipe.gate
    if not recipe.patch:
        steps = steps_per_epoch(len(x), batch, recipe.augment)
        train = dataset(x, y, batch, seed, epochs, plan.classes, shuffle=True,
                        augment=recipe.augment, presence=gate)
        val = dataset(val_x, val_y, batch * 2, classes=plan.classes, presence=gate)
        return train, val, steps
    # Random patches come from a generator: resumption continues with fresh draws, not the same.
    train = random_patches(x, y, sizes, recipe.patch, batch, seed, plan.classes)
    val = dataset(*grid_patches(val_x, val_y, val_sizes, recipe.patch), batch * 2,
                  classes=plan.classes)
    return train, val, patches_per_epoch(sizes, recipe.patch, batch) // batch
