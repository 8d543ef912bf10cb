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


def test_objects_are_measured_one_by_one_not_as_whole_masks():
    """Dozens of small nuclei in a mask are dozens of small objects, not one large one."""
    masks = discs(20, (256, 256), 6, 30)
    diameter = budget.object_diameters(masks, 1)[1]
    assert 10 <= diameter <= 14  # discs of radius 6: ~12 px across
    whole_mask = 2 * np.sqrt(np.median(masks.reshape(20, -1).sum(1)) / np.pi)
    assert whole_mask > 4 * diameter  # what the area of a mask would say


def test_each_class_is_measured_and_empty_masks_do_not_count():
    labels = np.zeros((4, 64, 64), np.uint8)
    labels[:2, 10:30, 10:30] = 1  # class 1: 20x20 squares
    labels[:2, 40:44, 40:44] = 2  # class 2: 4x4 squares
    diameters = budget.object_diameters(labels, 2)
    assert diameters[1] > 20 and 4 < diameters[2] < 5
    assert budget.object_diameters(np.zeros((3, 8, 8), np.uint8), 1) == {}


def test_the_default_size_keeps_a_typical_mask_24_pixels_across():
    masks = discs(10, (420, 580), 40, 1)  # one disc 80 px across each
    assert budget.default_size(masks, 0, 16)[0] == [128, 176]  # 24/80 of 420x580, to 16s
    assert budget.default_size(masks, 600, 16)[0][1] <= 160  # a tight budget: 160 at most
    empty = np.zeros((4, 64, 96), np.uint8)
    assert budget.default_size(empty, 0, 16)[0] == [64, 96]  # nothing to see: 64 at least


def test_sizes_run_from_the_objects_to_the_original_keeping_the_aspect():
    sizes = budget.size_range((420, 580), 60, 16)
    assert sizes[0] == [160, 224] and sizes[-1] == [416, 576]  # 24/60 of the frame, then all of it
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in sizes)
    assert all(a[0] * a[1] < b[0] * b[1] for a, b in zip(sizes, sizes[1:]))
    assert budget.size_range((420, 580), 60, 16, longest=256)[-1][1] == 256
    assert budget.size_range((256, 256), 12, 16) == [[256, 256]]  # small objects: full size


def test_the_plan_takes_the_largest_size_the_budget_trains_long_enough():
    sizes = budget.size_range((420, 580), 60, 16)
    cpu = lambda size: 2e-6 * size[0] * size[1]  # time grows with the pixels
    size, epochs, measured = budget.plan(sizes, cpu, steps_per_epoch=30, budget=300)
    assert epochs >= budget.needed_epochs(30) and size != sizes[-1]
    bigger = sizes[sizes.index(size) + 1]
    assert budget.affordable(cpu(bigger), 30, 300) < budget.needed_epochs(30)  # the next one is not
    assert len(measured) <= 3


def test_fast_steps_buy_the_full_size_and_slow_ones_the_smallest():
    sizes = budget.size_range((420, 580), 60, 16)
    gpu = lambda size: 0.02 + 1e-8 * size[0] * size[1]  # mostly overhead
    assert budget.plan(sizes, gpu, 30, 600)[0] == sizes[-1]
    slow = lambda size: 1e-4 * size[0] * size[1]
    assert budget.plan(sizes, slow, 30, 600)[0] == sizes[0]


def test_a_time_limit_sizes_the_run_from_steps_timed_on_this_machine(demo, tmp_path):
    import json
    import shutil

    from conftest import run_script
    raw, work = demo
    for name in ("imgs_train", "imgs_mask_train", "imgs_subject_train"):
        shutil.copy(work / f"{name}.npy", tmp_path)
    result = run_script("train.py", "--workdir", tmp_path, "--time-limit", 45, "--fill-budget",
                        "--width", 4, "--depth", 2, "--folds", 3, "--batch-size", 8)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    plan, (h, w) = config["plan"], config["settings"]["input_size"]
    assert plan["seconds_per_step"] and plan["predicted_epochs"] >= 1
    assert f"working size {w}x{h}: objects" in result.stdout and "s per fold" in result.stdout
    assert h >= plan["smallest"][0] and config["settings"]["epochs"] == 1000  # the plan decides
    assert config["settings"]["patience"] == 1000  # no early stop


def test_thin_structures_are_sized_by_their_thickness_not_their_area():
    membranes = np.zeros((4, 256, 256), np.uint8)
    membranes[:, :, 60:64] = membranes[:, 100:104, :] = membranes[:, :, 180:184] = 1  # 4 px lines
    assert 3 < budget.thickness(membranes[0].astype(bool)) < 5
    size, across = budget.default_size(membranes, 0, 16)
    assert across < 20 and size == [256, 256]  # kept at full resolution, not shrunk to 64
    disc = discs(1, (420, 580), 40, 1)[0] > 0
    assert 30 < budget.thickness(disc) < 45  # a disc: about half its diameter: its area rules
