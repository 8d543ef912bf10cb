"""Predict the final binary test masks with the model(s) train.py saved.

    python predict.py

Reads --workdir/imgs_test.npy and model/ (every fold listed in config.json is averaged),
and writes imgs_mask_test.npy: (N, H, W) uint8 in {0, 1} at the original size, in the order
of imgs_id_test.npy, with the tuned threshold and minimum area already applied; plus a few
preview PNGs in preview/, and report.html: the run at a glance (see report.py).
"""

import json
import zipfile

import common

tf = common.import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import cv2
import keras
import numpy as np

from common import UserError, log

THRESHOLDS = np.round(np.arange(0.2, 0.91, 0.05), 2)


def get_args():
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--chunk", type=int, default=512, help="images held in memory at once")
    p.add_argument("--previews", type=int, default=8, help="preview PNGs to write")
    return p.parse_args()


# ---------------------------------------------------------------- the model

def load_models(model_dir):
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise UserError(f"{config_path} not found: run `python train.py` first")
    try:
        config = json.loads(config_path.read_text())
        names = [model_dir / name for name in config["folds"]]
        float(config["threshold"]), int(config["min_area"]), bool(config["tta"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{config_path} is damaged ({type(e).__name__}: {e}): run `python train.py` again") from None
    models = []
    for path in names:
        if path.exists() and not zipfile.is_zipfile(path):
            raise UserError(f"{path} is truncated or not a Keras model: run `python train.py` again")
        try:
            # safe_mode stays on: a model file never runs code of its own when loaded.
            models.append(keras.models.load_model(path, compile=False, safe_mode=True))
        except Exception as e:   # whatever the reason, the one fix is to train again
            raise UserError(f"{path} cannot be loaded ({str(e).splitlines()[0][:120]}): "
                            f"run `python train.py` again") from None
    shapes = {(m.input_shape[1:], m.output_shape[1:]) for m in models}
    if len(shapes) > 1 or any(m.output_shape[1:3] != m.input_shape[1:3] or m.output_shape[-1] != 1 for m in models):
        raise UserError(f"the models in {config_path} do not share one input size with a one-class output "
                        f"({sorted(map(str, shapes))}): run `python train.py` again")
    return models, config


def probabilities(models, images, batch_size, tta, quiet=True):
    """Foreground probability of each image at the models' working size, averaged over
    the models and, with tta, over the horizontal flip (both in one forward pass)."""
    size = models[0].input_shape[1:3]
    out = np.empty((len(images), *size), np.float32)
    for start in common.progress(range(0, len(images), batch_size), quiet or len(images) <= batch_size,
                                 desc="predict", unit="batch"):
        x = common.resize_stack(images[start:start + batch_size], size, "area")[..., None].astype(np.float32)
        n = len(x)
        if tta:
            x = np.concatenate([x, x[:, :, ::-1]])
        p = np.mean([np.asarray(m.predict_on_batch(x), np.float32) for m in models], axis=0)[..., 0]
        out[start:start + n] = (p[:n] + p[n:, :, ::-1]) / 2 if tta else p
    return out


# ---------------------------------------------------------------- post-processing

def final_masks(probs, size, threshold, min_area, out=None):
    """Upsample to the original size, threshold, and empty every mask smaller than min_area."""
    probs_full = common.resize_stack(probs, size, "linear")
    masks = np.greater(probs_full, threshold, out=np.empty(probs_full.shape, bool)).view(np.uint8)
    areas = masks.reshape(len(masks), -1).sum(1)
    masks[areas < min_area] = 0
    if out is None:
        return masks
    out[:] = masks
    return out


def tune_postprocessing(probs, truth, pixel_area, grid=None):
    """Threshold and minimum area (in original pixels) that maximise the mean Dice.

    Tuned at the working size (pixel_area original pixels per working pixel): the area gate
    only ever empties whole masks, so every candidate is scored from per-image counts.
    Every (threshold, minimum area, score) tried is appended to the list `grid` if given."""
    truth = truth.reshape(len(truth), -1).astype(bool)
    truth_area = truth.sum(1)
    best = (-1.0, 0.5, 0)
    for t in THRESHOLDS:
        pred = probs.reshape(len(probs), -1) > t
        area = pred.sum(1)
        inter = (pred & truth).sum(1)
        total = area + truth_area
        dice = np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))
        empty_score = (truth_area == 0).astype(float)
        for min_area in np.unique(np.concatenate([[0], np.quantile(area[area > 0], np.linspace(0, 0.6, 31))
                                                   if (area > 0).any() else []])):
            score = np.where(area < min_area, empty_score, dice).mean()
            if grid is not None:
                grid.append((float(t), int(round(min_area * pixel_area)), float(score)))
            if score > best[0] + 1e-9:
                best = (score, float(t), int(round(min_area * pixel_area)))
    log.info(f"tuned on {len(probs)} validation images: threshold {best[1]:.2f}, "
             f"minimum area {best[2]} px (Dice at working size {best[0]:.4f})")
    return best[1], best[2]


# ---------------------------------------------------------------- previews

def save_previews(folder, images, masks, ids):
    folder.mkdir(parents=True, exist_ok=True)
    for image, mask, i in zip(images, masks, ids):
        overlay = cv2.cvtColor(np.asarray(image), cv2.COLOR_GRAY2BGR)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, (0, 255, 255), 2)
        with common.atomic_path(folder / f"{i}.png") as tmp:
            if not cv2.imwrite(str(tmp), overlay):
                raise UserError(f"cannot write {folder / f'{i}.png'}: check free disk space and permissions")


# ---------------------------------------------------------------- main

def main():
    args = get_args()
    common.setup_logging(args)
    work = args.workdir
    fix = "run `python data.py` first"
    images = common.load_npy(work / "imgs_test.npy", "test image array", fix, mmap=True)
    ids = common.load_npy(work / "imgs_id_test.npy", "test id array", fix)
    if len(ids) != len(images):
        raise UserError(f"{work}/imgs_test.npy and imgs_id_test.npy disagree: run `python data.py` again")
    models, config = load_models(work / "model")
    channels = models[0].input_shape[-1]
    if images.ndim != 3 or channels != 1:
        raise UserError(f"the model expects {channels} channel(s) but {work}/imgs_test.npy has shape "
                        f"{images.shape}: train and predict on the same data")
    trained_on = config.get("original_size")
    if trained_on and list(images.shape[1:]) != list(trained_on):
        raise UserError(f"{work / 'model'} was trained on {trained_on[1]}x{trained_on[0]} images but "
                        f"{work}/imgs_test.npy holds {images.shape[2]}x{images.shape[1]} ones: run `python data.py` "
                        f"and `python train.py` on this competition's data")

    with common.atomic_path(work / "imgs_mask_test.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=images.shape)
        for start in common.progress(range(0, len(images), args.chunk), args.quiet, desc="test chunks"):
            chunk = images[start:start + args.chunk]
            probs = probabilities(models, chunk, args.batch_size, config["tta"], quiet=True)
            final_masks(probs, images.shape[1:], config["threshold"], config["min_area"],
                        out=out[start:start + len(chunk)])
        out.flush()
        n = min(args.previews, len(images))
        save_previews(work / "preview", images[:n], out[:n], ids[:n])
        empty = float((out.reshape(len(out), -1).max(1) == 0).mean())
        del out
    log.info(f"{len(images)} masks ({empty:.0%} empty) -> {work / 'imgs_mask_test.npy'}")
    import report   # here, not above: the report draws with visualize.py, which imports this module
    report.write_report(work, models, config)


if __name__ == "__main__":
    common.run(main)
