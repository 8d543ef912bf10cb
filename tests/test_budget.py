"""The working size a budget buys: objects measured as objects, sizes from the measured speed."""

import cv2
import numpy as np

from kit import budget


def discs(n, shape, radius, count, seed=0):
    """n masks holding `count` discs each of the given radius."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, *shape), np.uint8)
    for mask in masks:
        for _ in range(count):
            y, x = rng.integers(radius, shape[0] - radius), rng.integers(radius, shape[1] - radius)
            cv2.circle(mask, (int(x), int(y)), radius, 1, -1)
    return masks


def test_many_small_objects_are_sized_by_the_objects_not_by_the_whole_mask():
    """Dozens of small nuclei in a mask: about twice a nucleus across, not the disc of all."""
    masks = discs(20, (256, 256), 6, 30)  # nuclei 12 px across
    across = budget.default_size(masks, 0, 16)[1]
    assert 12 <= across <= 30
    whole_mask = 2 * np.sqrt(np.median(masks.reshape(20, -1).sum(1)) / np.pi)
    assert whole_mask > 3 * across  # what the area of a mask would say


def test_the_thinnest_class_of_label_masks_sets_the_size():
    labels = np.zeros((4, 256, 256), np.uint8)
    labels[:2, 10:90, 10:90] = 1  # class 1: 80x80 squares
    labels[:2, 140:148, 140:148] = 2  # class 2: 8x8 squares
    size, across = budget.default_size(labels, 0, 16, classes=2)
    assert across < 10 and size == [256, 256]
    assert budget.default_size(labels, 0, 16)[1] > 20  # binary: one mask of both
    assert budget.default_size(np.zeros((3, 64, 64), np.uint8), 0, 16, classes=2)[1] == 64


def test_the_default_size_keeps_a_typical_mask_24_pixels_across():
    masks = discs(10, (420, 580), 40, 1)  # one disc 80 px across each
    assert budget.default_size(masks, 0, 16)[0] == [128, 176]  # 24/80 of 420x580, to 16s
    assert budget.default_size(masks, 600, 16)[0][1] <= 160  # a tight budget: 160 at most
    empty = np.zeros((4, 64, 96), np.uint8)
    assert budget.default_size(empty, 0, 16)[0] == [64, 96]  # nothing to see: 64 at least


def test_sizes_run_from_the_smallest_to_the_original_keeping_the_aspect():
    sizes = budget.size_range((420, 580), 16, floor=[112, 160])
    assert sizes[0] == [64, 96] and sizes[-1] == [416, 576] and [112, 160] in sizes
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in sizes)
    assert all(a[0] * a[1] < b[0] * b[1] for a, b in zip(sizes, sizes[1:]))
    assert budget.size_range((64, 64), 16) == [[64, 64]]


CPU = lambda size: 3e-5 * size[0] * size[1]  # time grows with the pixels: 0.54 s at 112x160
GPU = lambda size: 0.01 + 1e-9 * size[0] * size[1]  # mostly overhead


def test_the_objects_size_stays_where_the_budget_buys_enough_epochs_but_not_many_more():
    sizes = budget.size_range((420, 580), 16, floor=[112, 160])
    size, step, measured = budget.plan_size([112, 160], sizes, CPU, steps_per_epoch=30, budget=1000)
    epochs = budget.affordable(step, 30, 1000)
    assert size == [112, 160] and budget.MIN_EPOCHS <= epochs < budget.GROW_EPOCHS
    assert list(measured) == [(112, 160)]  # one timing


def test_fast_steps_grow_the_size_and_slow_ones_shrink_it():
    sizes = budget.size_range((420, 580), 16, floor=[112, 160])
    size, step, measured = budget.plan_size([112, 160], sizes, GPU, 30, 600)
    assert size == [416, 576] and len(measured) <= 3
    assert budget.affordable(step, 30, 600) >= budget.growth_epochs(30)
    slow = lambda size: 1.2 * CPU(size)
    size, step, _ = budget.plan_size([112, 160], sizes, slow, 30, 600)
    assert size[0] < 112 and budget.affordable(step, 30, 600) >= budget.MIN_EPOCHS
    bigger = sizes[sizes.index(size) + 1]
    assert budget.affordable(slow(bigger), 30, 600) < budget.MIN_EPOCHS
    assert budget.plan_size([112, 160], sizes, lambda s: 100 * CPU(s), 30, 600)[0] == sizes[0]


def test_shrinking_to_buy_epochs_keeps_a_typical_object_16_pixels_across():
    """Objects 80 px across in 420x580 frames: no candidate below the floor makes them smaller
    than LEAST_OBJECT_PIXELS, however few epochs the smallest buys."""
    sizes = budget.size_range((420, 580), 16, floor=[112, 160], across=80)
    assert [80, 112] in budget.size_range((420, 580), 16, floor=[112, 160])
    assert sizes[0] == [96, 144] and [112, 160] in sizes
    assert all(min(h / 420, w / 580) * 80 >= budget.LEAST_OBJECT_PIXELS for h, w in sizes)
    assert budget.plan_size([112, 160], sizes, lambda s: 100 * CPU(s), 30, 600)[0] == [96, 144]
    small = budget.size_range((420, 580), 16, floor=[112, 160], across=40)  # a capped floor
    assert small[0] == [112, 160] and small[1:] == sizes[2:]  # nothing smaller; larger all kept


def test_small_sets_grow_only_with_enough_optimizer_steps():
    """A set of a step per epoch buys many epochs, but epochs of one step teach little."""
    sizes = budget.size_range((420, 580), 16, floor=[112, 160])
    assert budget.plan_size([112, 160], sizes, CPU, steps_per_epoch=1, budget=1200)[0] == [112, 160]
    assert budget.plan_size([112, 160], sizes, GPU, 1, 1200)[0] != [112, 160]


def test_a_budget_of_many_epochs_buys_an_ensemble_of_folds():
    epoch = 1.1 * 0.5 + budget.EPOCH_SECONDS  # one step of 0.5 s: 1.55 s an epoch
    need = budget.FOLD_EPOCHS * epoch
    assert budget.folds(0.5, 1, 1.5 * need, 0, 5) == 1  # too little for two: one fold
    assert budget.folds(0.5, 1, 2 * need + 1, 0, 5) == 2
    assert budget.folds(0.5, 1, 2 * need + 1, 20, 5) == 1  # each fold compiles: 20 s each
    assert budget.folds(0.5, 1, 100 * need, 0, 5) == 5  # never more than there are
    assert budget.affordable(0.5, 1, 20, fixed=30) == 0


def test_the_time_kept_after_training_grows_with_the_validation_frames_to_predict():
    assert budget.reserve(0.3, 16, 0, True) == budget.AFTER_SECONDS
    few, many = budget.reserve(0.3, 16, 100, True), budget.reserve(0.3, 16, 1000, True)
    assert budget.AFTER_SECONDS < few < many
    assert budget.reserve(0.3, 16, 1000, False) < many  # one pass a frame without tta
    assert budget.reserve(3.0, 16, 1000, True) > many  # a slower machine keeps more


def test_a_time_limit_sizes_the_run_from_steps_timed_on_this_machine(demo, tmp_path):
    import json
    import shutil

    from conftest import run_script
    raw, work = demo
    for name in ("imgs_train", "imgs_mask_train", "imgs_subject_train"):
        shutil.copy(work / f"{name}.npy", tmp_path)
    result = run_script("train.py", "--workdir", tmp_path, "--time-limit", 45, "--width", 4,
                        "--depth", 2, "--folds", 3, "--batch-size", 8)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    plan, (h, w) = config["plan"]["sizing"], config["plan"]["size"]
    assert plan["seconds_per_step"] and plan["predicted_epochs"] >= 1 and plan["objects_size"]
    assert f"working size {w}x{h}: masks" in result.stdout and "steps in" in result.stdout
    assert "kept for out-of-fold predictions and records" in result.stdout
    assert config["plan"]["epochs"] is None  # the budget decides, uncapped
    assert config["plan"]["patience"] is None  # no early stop
    assert len(config["folds"]) == budget.folds(plan["step_seconds"], plan["steps_per_epoch"],
                                                plan["seconds"], plan["fixed_seconds"], 3)
    seconds = config["seconds"]
    assert 0 < seconds["before training"] and 0 < sum(seconds["training"])
    assert f"{sum(seconds['training']):.0f} s of them in training" in result.stdout
    history = (tmp_path / "model" / "history_fold0.csv").read_text().splitlines()
    assert "seconds" in history[0].split(",") and len(history) > 2


def test_thin_structures_are_sized_by_their_thickness_not_their_area():
    membranes = np.zeros((4, 256, 256), np.uint8)
    membranes[:, :, 60:64] = membranes[:, 100:104, :] = membranes[:, :, 180:184] = 1  # 4 px lines
    assert 3 < budget.thickness(membranes[0].astype(bool)) < 5
    size, across = budget.default_size(membranes, 0, 16)
    assert across < 20 and size == [256, 256]  # kept at full resolution, not shrunk to 64
    disc = discs(1, (420, 580), 40, 1)[0] > 0
    assert 30 < budget.thickness(disc) < 45  # a disc: about half its diameter: its area rules
