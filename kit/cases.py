"""Frames to look at (validation, training, test, or any image file) with their truth, and the
probability and final mask predict.py would make of them. A validation frame is predicted by
its own fold's model, which never saw it; any other frame by all the models."""

import re

import numpy as np

from kit import arrays
from kit.files import UserError
from kit.images import image_size, label_table, read_image, read_mask, resize_stack
from kit.inference import final_masks, probabilities, tile_models, tiled_probabilities
from kit.model import classes_of


def fold_models(models, config):
    """{fold: model} of the saved models, from their names in config.json."""
    return {
        int(re.fullmatch(r"fold(\d+)\.keras", name).group(1)): m
        for name, m in zip(config.folds, models)
    }


def validation_table(model_dir):
    """One row per validation frame: index into imgs_train.npy, subject, fold, truth_area, dice."""
    import pandas as pd

    path = model_dir / "validation.csv"
    if not path.exists():
        raise UserError(
            f"{path} not found: run `python train.py` (again) to record the validation frames")
    return pd.read_csv(path)


def make_case(image, truth, label, models, config):
    """One image with its truth (or None), and the probability (at the image's size) and final
    mask that predict.py would make of it with these models."""
    image = np.asarray(image)
    size = image.shape[:2]
    if config.tile:  # trained on patches: predicted by tiles, as predict.py does
        tiled, overlap = tile_models(models, config.tile, 0)
        probs = tiled_probabilities(tiled, image, config.tile, overlap, 8, config.tta)[None]
        presence = None
    else:
        probs, presence = probabilities(models, image[None], 1, config.tta)
    mask = final_masks(probs, size, config.threshold, config.min_area, presence=presence,
                       presence_threshold=config.presence_threshold)[0]
    foreground = (1 - probs[..., 0] if probs.ndim == 4 else probs
                  )  # label masks: any class but background
    return dict(image=image, truth=None if truth is None else np.asarray(truth), label=label,
                prob=resize_stack(foreground, size, "linear")[0], mask=mask)


def training_cases(work, positions, models, config, validation_only):
    """Frames of imgs_train.npy: `positions` count the validation frames (validation_only) or all.
    A validated frame is predicted by its own fold's model, any other by all the models."""
    images, masks, subjects = arrays.load_training_set(work)
    table = validation_table(work / "model")
    trained_on = config.data  # None: a model of an older kit, checked by its frame count alone
    now = arrays.training_fingerprint(images, masks, arrays.load_classes(work))
    if table["index"].max() >= len(images) or trained_on not in (None, now):
        raise UserError(f"{work}/model was trained on other arrays than {work}/imgs_train.npy "
                        f"(its validation.csv names other frames): run `python train.py` again "
                        f"on these arrays")
    frames = table["index"].to_numpy() if validation_only else np.arange(len(images))
    check_positions(positions, len(frames), "val" if validation_only else "train")
    fold_of = dict(zip(table["index"].tolist(), table["fold"].tolist()))
    by_fold = fold_models(models, config)
    cases = []
    for p in positions:
        i = int(frames[p])
        fold = fold_of.get(i)
        label = (
            f"{'val' if validation_only else 'train'} #{p}: frame {i}, subject {subjects[i]}, " +
            (f"fold {fold}" if fold in by_fold else "seen in training"))
        cases.append(
            make_case(images[i], masks[i], label, [by_fold[fold]] if fold in by_fold else models,
                      config))
    return cases


def test_cases(work, raw, truth_dir, positions, models, config):
    images, ids = arrays.load_test_set(work)
    check_positions(positions, len(images), "test")
    truth_dir = truth_dir or (raw / "test_masks" if (raw / "test_masks").is_dir() else None)
    classes = classes_of(models[0])
    return [
        make_case(images[p],
                  read_truth(truth_dir / f"{ids[p]}_mask.tif", classes) if truth_dir else None,
                  f"test #{p}: id {ids[p]}", models, config) for p in positions
    ]


def file_cases(paths, models, config):
    channels, classes = models[0].input_shape[-1], classes_of(models[0])
    cases = []
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path} not found: give the path of an image file")
        image = read_image(path, channels)
        truth = read_truth(path.with_name(f"{path.stem}_mask{path.suffix}"), classes, image)
        cases.append(make_case(image, truth, path.name, models, config))
    return cases


def read_truth(path, classes, image=None):
    """The mask in `path` (None if there is none), checked as data.py checks masks."""
    if not path.is_file():
        return None
    shape = image.shape[:2] if image is not None else image_size(path)
    return read_mask([path], path, shape, label_table(classes))


def check_positions(positions, n, name):
    bad = [p for p in positions if not 0 <= p < n]
    if bad:
        raise UserError(f"-n {bad[0]} is out of range: --set {name} has {n} frames (0 to {n - 1})")


def worst_positions(work, k):
    """Positions in validation.csv of its k lowest-Dice frames, worst first."""
    table = validation_table(work / "model")
    return [int(p) for p in np.argsort(table["dice"].to_numpy(), kind="stable")[:k]]
