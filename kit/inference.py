"""Inference: the saved models' probabilities with flip TTA and fold ensembles, whole images
or overlapping tiles, and the post-processing that makes final masks (threshold, minimum
area, back to each image's size), with the tuning of that threshold and area."""

import logging
import math
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kit import config as config_file
from kit import metrics
from kit.cli import import_tensorflow, progress
from kit.files import UserError
from kit.images import resize_stack

tf = import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kit.model import has_presence, mask_shape, stride_of  # noqa: E402

log = logging.getLogger(__name__)
THRESHOLDS = np.round(np.arange(0.2, 0.91, 0.05), 2)
PRESENCE_THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.1), 2)  # tried beside 0: no gate

# ---------------------------------------------------------------- the model


def load_models(model_dir):
    """The run's models (every fold listed in config.json) and its config."""
    config = config_file.load(model_dir)
    models = []
    for path in (Path(model_dir) / name for name in config.folds):
        if path.exists() and not zipfile.is_zipfile(path):
            raise UserError(
                f"{path} is truncated or not a Keras model: run `python train.py` again")
        try:
            # safe_mode stays on: a model file never runs code of its own when loaded.
            models.append(keras.models.load_model(path, compile=False, safe_mode=True))
        except Exception as e:  # whatever the reason, the one fix is to train again
            raise UserError(f"{path} cannot be loaded ({str(e).splitlines()[0][:120]}): "
                            f"run `python train.py` again") from None
    shapes = {(m.input_shape[1:], mask_shape(m)[1:], has_presence(m)) for m in models}
    if len(shapes) > 1 or any(mask_shape(m)[1:3] != m.input_shape[1:3] for m in models):
        raise UserError(f"the models in {model_dir / config_file.NAME} do not share one input "
                        f"size ({sorted(map(str, shapes))}): run `python train.py` again")
    if config.presence_threshold and not has_presence(models[0]):
        raise UserError(f"{model_dir / config_file.NAME} sets presence_threshold "
                        f"{config.presence_threshold} but its models have no presence output "
                        f"(train.py --gate): set it to 0, or run `python train.py` again")
    return models, config


def forward(models, x, tta):
    """The models' mean outputs for a batch of images (N, h, w[, C]) at their input scale and,
    with tta, over the horizontal flip (both in one forward pass): (probabilities, presence).
    probabilities: (N, h, w) foreground probabilities for a binary model, (N, h, w, K + 1) class
    probabilities otherwise; presence: (N,) the probability that each image holds any
    foreground, where every model has a presence head (train.py --gate), else None."""
    x = np.asarray(x, np.float32)
    x = x[..., None] if x.ndim == 3 else x
    n = len(x)
    if tta:
        x = np.concatenate([x, x[:, :, ::-1]])
    gated = all(map(has_presence, models))
    outputs = [m.predict_on_batch(x) for m in models]
    p = np.mean(
        [np.asarray(o[0] if has_presence(m) else o, np.float32) for m, o in zip(models, outputs)],
        axis=0)
    p = (p[:n] + p[n:, :, ::-1]) / 2 if tta else p
    presence = None
    if gated:
        q = np.mean([np.asarray(o[1], np.float32)[:, 0] for o in outputs], axis=0)
        presence = (q[:n] + q[n:]) / 2 if tta else q
    return (p[..., 0] if p.shape[-1] == 1 else p), presence


def probabilities(models, images, batch_size, tta, quiet=True, sizes=None):
    """(probabilities, presence) (see forward) of each image resized to the models' working
    size; sizes: each image's own (H, W) where a set mixes sizes."""
    size = models[0].input_shape[1:3]
    classes = mask_shape(models[0])[-1]
    out = np.empty((len(images), *size, *([classes] if classes > 1 else [])), np.float32)
    presence = np.empty(len(images), np.float32) if all(map(has_presence, models)) else None
    for start in progress(range(0, len(images), batch_size), quiet or len(images) <= batch_size,
                          desc="predict", unit="batch"):
        crop = None if sizes is None else sizes[start:start + batch_size]
        x = resize_stack(images[start:start + batch_size], size, "area", crop=crop)
        out[start:start + len(x)], q = forward(models, x, tta)
        if presence is not None:
            presence[start:start + len(x)] = q
    return out, presence


# ---------------------------------------------------------------- tiles


def resized_inputs(config, size):
    """A functional model's config with its inputs, and those of models nested in it (an
    encoder's backbone), taking images of `size` (H, W), or of any size where size is None."""
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = layer["config"]["batch_shape"]
            layer["config"]["batch_shape"] = (None, *(size or (None, None)), shape[-1])
        elif "layers" in layer["config"]:
            resized_inputs(layer["config"], size)
    return config


def fully_convolutional(model, size=None):
    """The same network and weights, taking images of `size` (H, W), or of any size where size is
    None: a multiple of its stride. Tiles pass their size: the encoders' bilinear upsampling
    needs the sizes known when it is traced."""
    flexible = keras.Model.from_config(resized_inputs(model.get_config(), size))
    flexible.set_weights(model.get_weights())
    return flexible


def blending_ramp(tile, overlap):
    """Weight along one axis of a tile: 1 inside, a cosine ramp over `overlap` pixels at each
    end, so that the ramps of neighbouring tiles (overlapping by `overlap`) add up to exactly 1."""
    w = np.ones(tile, np.float32)
    if overlap:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        w[:overlap], w[-overlap:] = ramp, ramp[::-1]
    return w


def tile_starts(length, tile, overlap):
    """Tile origins on an axis padded by `overlap` at the start: the first tile's ramp lies in
    the padding, and tiles continue until the last one's ramp lies in the padding at the end."""
    stride = tile - overlap
    count = max(1, -(-(length + 2 * overlap - tile) // stride) + 1)
    return [i * stride for i in range(count)], (count - 1) * stride + tile - length - overlap


def tiled_probabilities(models, image, tile, overlap, per_pass, tta):
    """Probabilities (see forward) of one image of any size at the models' scale, from
    overlapping tiles blended with cosine ramps; the borders are mirrored (reflect padding)
    so that every pixel is predicted with context. Memory: the image and one float32 buffer.
    A presence head is left unused: it was trained to judge whole images, not tiles."""
    h, w = image.shape[:2]
    ys, pad_y = tile_starts(h, tile, overlap)
    xs, pad_x = tile_starts(w, tile, overlap)
    spec = [(overlap, pad_y), (overlap, pad_x)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, spec, mode="symmetric" if min(h, w) < 2 else "reflect")
    classes = mask_shape(models[0])[-1]
    out = np.zeros((*padded.shape[:2], *([classes] if classes > 1 else [])), np.float32)
    ramp_y, ramp_x = blending_ramp(tile, overlap), blending_ramp(tile, overlap)
    weight = ramp_y[:, None] * ramp_x[None, :]
    if classes > 1:
        weight = weight[..., None]
    corners = [(y, x) for y in ys for x in xs]
    for start in range(0, len(corners), per_pass):
        batch = corners[start:start + per_pass]
        p = forward(models, np.stack([padded[y:y + tile, x:x + tile] for y, x in batch]), tta)[0]
        for (y, x), tile_p in zip(batch, p):
            out[y:y + tile, x:x + tile] += tile_p * weight
    return out[overlap:overlap + h, overlap:overlap + w]


def tile_models(models, tile, overlap):
    """The models ready for tiles of this size, and the overlap (default a quarter of the tile)."""
    stride = stride_of(models[0])
    overlap = overlap or tile // 4
    if tile % stride:
        raise UserError(f"--tile {tile} must be a multiple of {stride} (the model's stride)")
    if not 0 <= overlap < tile / 2:
        raise UserError(f"--overlap {overlap} must be less than half of --tile {tile}")
    if tuple(models[0].input_shape[1:3]) != (tile, tile):
        models = [fully_convolutional(m, (tile, tile)) for m in models]
    return models, overlap


def predict_by_tiles(models, image, size, config, tile, overlap, per_pass):
    """Final mask of one image of original size `size`: rescaled to the training scale,
    predicted by tiles, brought back to `size`."""
    image = np.asarray(image)[:size[0], :size[1]]
    sy, sx = config.scale
    scaled = (max(1, round(size[0] * sy)), max(1, round(size[1] * sx)))
    if scaled != tuple(size):
        interpolation = "area" if scaled[0] < size[0] else "linear"
        image = resize_stack(image[None], scaled, interpolation)[0]
    probs = tiled_probabilities(models, image, tile, overlap, per_pass, config.tta)
    return final_masks(probs[None], size, config.threshold, config.min_area)[0]


# ---------------------------------------------------------------- post-processing


def final_masks(probs, size, threshold, min_area, out=None, sizes=None, presence=None,
                presence_threshold=0.0):
    """Upsample to the original size, threshold, and empty every mask smaller than min_area, or
    whose image's presence (see forward) is below presence_threshold; class probabilities
    (N, h, w, K + 1) become label masks (the likeliest class).
    sizes: each image's own size, top-left on a canvas of `size`. One image at a time in threads
    (OpenCV drops the GIL): never a full-size float copy of them all."""
    if out is None:
        out = np.empty((len(probs), *size), np.uint8)

    def one(i):
        h, w = size if sizes is None else (int(sizes[i][0]), int(sizes[i][1]))
        full = cv2.resize(probs[i], (w, h), interpolation=cv2.INTER_LINEAR)
        if probs.ndim == 4:
            mask = np.argmax(full, axis=-1).astype(np.uint8)
        else:
            mask = np.greater(full, threshold).view(np.uint8)
            absent = presence is not None and presence[i] < presence_threshold
            mask = 0 if absent or np.count_nonzero(mask) < min_area else mask
        if sizes is not None:
            out[i] = 0
        out[i, :h, :w] = mask

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, range(len(probs))))
    return out


def area_candidates(area):
    """Minimum areas worth trying (working pixels): none, and quantiles of the non-empty masks'
    areas up to the 60th percentile."""
    if not (area > 0).any():
        return np.zeros(1)
    return np.unique(np.concatenate([[0], np.quantile(area[area > 0], np.linspace(0, 0.6, 31))]))


def centred(area, min_area):
    """Of the minimum areas that empty the same validation masks as `min_area`, the geometric
    middle of the gap between the largest mask it empties and the smallest it keeps: tuning
    finds the gap's lower end, which sits right above a stray blob; 0 where it empties none."""
    emptied, kept = area[(area > 0) & (area < min_area)], area[area >= min_area]
    if not len(emptied):
        return 0.0
    return math.sqrt(emptied.max() * kept.min()) if len(kept) else float(min_area)


def tune_postprocessing(probs, truth, pixel_area, grid=None, presence=None):
    """The threshold, minimum area (in original pixels) and, where the models give presence (see
    forward), the presence threshold that maximise the mean Dice: a dict of final_masks' names.

    Tuned at the working size (pixel_area original pixels per working pixel): both gates only
    ever empty whole masks, so every candidate is scored from per-image counts. A frame is
    predicted empty when its mask is smaller than the minimum area or its presence is below the
    presence threshold; a presence threshold of 0 never gates, and is kept unless a gate scores
    better than every candidate without one: the gate must earn its place; ties go to the lowest
    values, and the minimum area to the middle of its gap (centred). Every (threshold,
    minimum area, presence threshold, score) tried is appended to the list `grid` if given."""
    truth = truth.reshape(len(truth), -1).astype(bool)
    truth_area = truth.sum(1)
    empty_score = (truth_area == 0).astype(float)
    gates = [0.0] if presence is None else [0.0, *PRESENCE_THRESHOLDS]
    best = {False: (0.5, 0, 0.0, -1.0), True: (0.5, 0, 0.0, -1.0)}  # without, with the gate
    for t in THRESHOLDS:
        pred = probs.reshape(len(probs), -1) > t
        area = pred.sum(1)
        dice = metrics.dice_from_counts((pred & truth).sum(1), area + truth_area)
        for min_area in area_candidates(area):
            for gate in gates:
                emptied = (area < min_area) | (gate > 0 and presence < gate)
                score = float(np.where(emptied, empty_score, dice).mean())
                row = (float(t), int(round(min_area * pixel_area)), float(gate), score)
                if grid is not None:
                    grid.append(row)
                if score > best[gate > 0][-1] + 1e-9:  # the first best: the lowest values
                    best[gate > 0] = (float(t), centred(area, min_area) * pixel_area, *row[2:])
    ungated, gated = best[False], best[True]
    threshold, min_area, gate, score = gated if gated[-1] > ungated[-1] + 1e-9 else ungated
    min_area = int(round(min_area))
    gain = (f", presence threshold {gate:.1f} (without the presence gate: {ungated[-1]:.4f})"
            if presence is not None else "")
    log.info(f"tuned on {len(probs)} validation images: Dice at working size {score:.4f} with "
             f"threshold {threshold:.2f}, minimum area {min_area} px{gain}")
    return dict(threshold=threshold, min_area=min_area, presence_threshold=gate)


# ---------------------------------------------------------------- a whole set


def predict_set(models, config, images, sizes, out, batch_size, chunk, tile=0, overlap=0,
                quiet=False):
    """Final masks of a set of images into `out` (N, H, W): by tiles at the training scale, or
    whole images resized to the working size, `chunk` images in memory at a time."""
    if tile:
        if config.presence_threshold:
            log.warning("by tiles, the presence gate (config.json's presence_threshold) is not "
                        "applied: it was trained to judge whole images")
        per_pass = max(1, batch_size * int(np.prod(models[0].input_shape[1:3])) // tile**2)
        models, overlap = tile_models(models, tile, overlap)
        for i in progress(range(len(images)), quiet, desc="tiled images"):
            h, w = sizes[i] if sizes is not None else images.shape[1:3]
            out[i] = 0
            out[i, :h, :w] = predict_by_tiles(models, images[i], (h, w), config, tile, overlap,
                                              per_pass)
        return out
    for start in progress(range(0, len(images), chunk), quiet, desc="test chunks"):
        part = images[start:start + chunk]
        crop = None if sizes is None else sizes[start:start + chunk]
        probs, presence = probabilities(models, part, batch_size, config.tta, quiet=True,
                                        sizes=crop)
        final_masks(probs, images.shape[1:3], config.threshold, config.min_area,
                    out=out[start:start + len(part)], sizes=crop, presence=presence,
                    presence_threshold=config.presence_threshold)
    return out
