"""What a time budget buys: the working size and the epochs, chosen from the size of the objects
and from training steps timed on this machine in the first seconds of the run.

The objects set the working size (default_size: a typical object about OBJECT_PIXELS across).
Under a time limit the measured speed then moves it (plan): larger where the budget still buys
GROW_EPOCHS passes and GROW_UPDATES optimizer steps there (a GPU), smaller only where the
objects' size would not buy MIN_EPOCHS (a slow CPU on a large set), while a typical object
stays LEAST_OBJECT_PIXELS across. A laptop CPU, a T4 and an H100 differ a hundredfold: the same
defaults pick a larger size where steps are fast. nnU-Net configures itself from a dataset
fingerprint and the GPU's memory; this is the same idea for a time budget. On a CPU, epochs
counted for more than resolution around the objects' size (bench/README.md): hence the high bar
for growing, and the shrinking below it."""

import logging
import math

import cv2
import numpy as np

log = logging.getLogger(__name__)
OBJECT_PIXELS = 24  # a typical object's diameter at the working size, at least
LEAST_OBJECT_PIXELS = 16  # never smaller than this to buy epochs
MIN_EPOCHS = 50  # below this many passes at the objects' size, train smaller
GROW_EPOCHS = 60  # larger than the objects' size only where the budget still buys this many
GROW_UPDATES = 1000  # and this many optimizer steps (small sets: epochs of a step or two)
FOLD_EPOCHS = 60  # epochs of a fold, at least, before the budget buys another (an ensemble)
EPOCH_SECONDS = 1.0  # an epoch's own costs beyond its steps: validation, checkpoint, curves
AFTER_SECONDS = 15.0  # kept after the training: loading, tuning, records, and the start-up
LONGEST = 256  # the longest side without a time budget to size it by
SHORTEST = 64  # never smaller on the short side


def default_size(masks, time_limit, stride, sizes=None, classes=1, most=500):
    """The objects' working size: the smallest scale that keeps a typical mask of the
    thinnest class about OBJECT_PIXELS across, at most 256 pixels on the long side, 160 on a
    budget of 20 minutes or less (under a time limit, plan() may then move it). Returns
    ((H, W), across in original pixels)."""
    h, w = np.median(sizes, axis=0) if sizes is not None else masks.shape[1:3]
    sample = [np.asarray(m) for m in masks[::max(1, len(masks) // most)]]
    labels = range(1, classes + 1) if classes > 1 else [None]
    per_class = [[m == c if c else m > 0 for m in sample] for c in labels]
    widths = [across([m for m in binary if m.any()]) for binary in per_class]
    diameter = min([d for d in widths if d] or [min(h, w)])
    longest = 160 if 0 < time_limit <= 1200 else LONGEST
    scale = min(max(min(1.0, OBJECT_PIXELS / diameter), SHORTEST / min(h, w)), longest / max(h, w))
    return round_to((h * scale, w * scale), stride), diameter


def across(masks):
    """How far across a typical mask of these is (None for none): the diameter of the disc of
    its area, or four times its thickness where that is smaller. Thin structures (membranes,
    vessels) need the resolution their area hides; dozens of small nuclei in one mask are
    about twice a nucleus across, not the disc of all of them; a round mask, half as thick as
    wide, keeps its diameter."""
    if not masks:
        return None
    area = np.median([m.sum() for m in masks])
    return min(2 * math.sqrt(area / math.pi), 4 * np.median(list(map(thickness, masks))))


def thickness(mask):
    """A binary mask's mean thickness: twice its area over its boundary pixels (a strip t wide
    gives t, a disc D across D/2)."""
    mask = mask.view(np.uint8)
    inner = cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    boundary = np.count_nonzero(mask) - np.count_nonzero(inner)
    return 2 * np.count_nonzero(mask) / max(1, boundary)


def area(size):
    return size[0] * size[1]


def round_to(size, stride):
    return [max(stride, int(round(n / stride)) * stride) for n in size]


def size_range(original, stride, floor=None, across=None):
    """Candidate working sizes (H, W), smallest first, keeping the aspect ratio: from SHORTEST
    on the short side up to the original size, in steps of about 1.25x in each dimension, with
    `floor` (the objects' size) among them, and none below it where a typical object `across`
    original pixels wide would be under LEAST_OBJECT_PIXELS."""
    h, w = original
    low = min(1.0, SHORTEST / min(h, w))
    scales = [low * 1.25**k for k in range(int(math.log(1 / low, 1.25)) + 1)] + [1.0]
    sizes = [round_to((h * scale, w * scale), stride) for scale in scales]
    sizes += [list(floor)] if floor else []
    if floor and across:
        seen = lambda s: min(s[0] / h, s[1] / w) * across
        sizes = [s for s in sizes if area(s) >= area(floor) or seen(s) >= LEAST_OBJECT_PIXELS]
    return sorted(map(list, {tuple(s) for s in sizes}), key=lambda s: (area(s), s))


def affordable(seconds, steps_per_epoch, budget, fixed=0.0):
    """Epochs a budget buys at `seconds` per training step, after `fixed` seconds paid once
    (tracing and compiling)."""
    return int(max(0.0, budget - fixed) / (1.1 * seconds * steps_per_epoch + EPOCH_SECONDS))


def reserve(seconds, batch_size, frames, tta):
    """Seconds of a budget to keep for what follows the training: AFTER_SECONDS, and twice what
    the out-of-fold predictions of `frames` validation frames should take at `seconds` per
    training step of `batch_size` (a forward pass costs about a third of a step; with tta, two
    passes a frame)."""
    forward = seconds / batch_size / 3 * (2 if tta else 1)
    return AFTER_SECONDS + 2 * forward * frames


def growth_epochs(steps_per_epoch):
    return max(GROW_EPOCHS, math.ceil(GROW_UPDATES / steps_per_epoch))


def folds(seconds, steps_per_epoch, budget, fixed, most):
    """How many folds share a budget, each training FOLD_EPOCHS at least at `seconds` per step
    and paying `fixed` seconds of its own: one or more, `most` at most. On small sets, epochs
    past that many overfit where an ensemble of folds does not (bench/README.md)."""
    fit = [
        n for n in range(1, most + 1)
        if affordable(seconds, steps_per_epoch, budget / n, fixed) >= FOLD_EPOCHS
    ]
    return max(fit, default=1)


def step_model(measured):
    """Seconds per step as a function of the pixel count, from the steps measured so far:
    proportional to the pixels from one measurement (an overestimate where small steps are
    mostly overhead, as on a GPU), affine through the measurements once there are two."""
    pixels = np.array([h * w for h, w in measured], float)
    seconds = np.array(list(measured.values()))
    if len(pixels) > 1 and np.ptp(pixels) > 0:
        slope, intercept = np.polyfit(pixels, seconds, 1)
        if slope > 0:
            return lambda p: max(seconds.min(), intercept + slope * p)
    rate = (seconds / pixels).max()
    return lambda p: rate * p


def plan(floor, candidates, timing, steps_per_epoch, budget, probes=3):
    """The working size (H, W) the budget buys: the largest candidate above `floor` (the
    objects' size) that still affords growth_epochs; else `floor` if it affords MIN_EPOCHS;
    else the largest smaller candidate that does (or the smallest). Steps are timed at `floor`,
    then at each size the predictions pick, until a pick was measured already (at most `probes`
    timings). Returns (size, its predicted seconds per step, {(H, W): measured seconds})."""
    measured, size = {}, list(floor)
    for _ in range(probes):
        measured[tuple(size)] = timing(size)
        seconds = step_model(measured)
        epochs = lambda c: affordable(seconds(area(c)), steps_per_epoch, budget)
        larger = [c for c in candidates if area(c) > area(floor)]
        larger = [c for c in larger if epochs(c) >= growth_epochs(steps_per_epoch)]
        smaller = [c for c in candidates if area(c) <= area(floor) and epochs(c) >= MIN_EPOCHS]
        size = (larger or smaller or candidates[:1])[-1]
        if tuple(size) in measured:
            break
    return size, seconds(area(size)), measured
