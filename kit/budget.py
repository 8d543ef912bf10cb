"""What a time budget buys: the working size and the epochs, chosen from the size of the objects
and from training steps timed on this machine in the first seconds of the run.

The objects set the smallest size worth training at (a typical object stays about
OBJECT_PIXELS across); the measured speed sets the largest size at which the budget still buys
enough passes over the data to converge (MIN_EPOCHS, and MIN_UPDATES optimizer steps). A laptop
CPU, a T4 and an H100 differ a hundredfold: the same defaults pick a larger size where steps
are fast. nnU-Net configures itself from a dataset fingerprint and the GPU's memory; this is
the same idea for a time budget."""

import logging
import math

import cv2
import numpy as np

log = logging.getLogger(__name__)
OBJECT_PIXELS = 24  # a typical object's diameter at the working size, at least
MIN_EPOCHS = 20  # passes over the training set the budget must buy
MIN_UPDATES = 400  # and optimizer steps, for small sets whose epochs are a few steps
LONGEST = 256  # the longest side without a time budget to size it by
SHORTEST = 64  # never smaller on the short side


def default_size(masks, time_limit, stride, sizes=None, most=500):
    """The default working size: the smallest scale that keeps a typical mask about
    OBJECT_PIXELS across, at most 256 pixels on the long side, 160 on a budget of 20 minutes or
    less. "Across" is the diameter of the disc of the mask's area, or four times its thickness
    where that is smaller: thin structures (membranes, vessels) need the resolution their area
    hides, and a round mask, half as thick as wide, keeps its diameter. Measured better than
    planning on the real sets so far (bench/README)."""
    h, w = np.median(sizes, axis=0) if sizes is not None else masks.shape[1:3]
    sample = [np.asarray(m) > 0 for m in masks[::max(1, len(masks) // most)]]
    sample = [m for m in sample if m.any()]
    if not sample:
        diameter = min(h, w)
    else:
        area = np.median([m.sum() for m in sample])
        diameter = min(2 * math.sqrt(area / math.pi), 4 * np.median(list(map(thickness, sample))))
    longest = 160 if 0 < time_limit <= 1200 else LONGEST
    scale = min(max(min(1.0, OBJECT_PIXELS / diameter), SHORTEST / min(h, w)), longest / max(h, w))
    return round_to((h * scale, w * scale), stride), diameter


def thickness(mask):
    """A binary mask's mean thickness: twice its area over its boundary pixels (a strip t wide
    gives t, a disc D across D/2)."""
    mask = mask.view(np.uint8)
    inner = cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    boundary = np.count_nonzero(mask) - np.count_nonzero(inner)
    return 2 * np.count_nonzero(mask) / max(1, boundary)


def object_diameters(masks, classes, sizes=None, most=500):
    """Median diameter (of the disc of equal area) of the connected objects of each class, in
    original pixels, from up to `most` masks: {class: diameter}, classes without objects left
    out. Objects, not masks: dozens of small nuclei make dozens of small objects."""
    step = max(1, len(masks) // most)
    areas = {c: [] for c in range(1, classes + 1)}
    for i in range(0, len(masks), step):
        mask = np.asarray(masks[i])
        if sizes is not None:
            mask = mask[:sizes[i][0], :sizes[i][1]]
        for c in areas:
            binary = (mask == c).view(np.uint8) if classes > 1 else (mask > 0).view(np.uint8)
            if binary.any():
                count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
                areas[c].extend(stats[1:, cv2.CC_STAT_AREA].tolist())
    return {c: 2 * math.sqrt(np.median(a) / math.pi) for c, a in areas.items() if a}


def round_to(size, stride):
    return [max(stride, int(round(n / stride)) * stride) for n in size]


def size_range(original, diameter, stride, longest=None):
    """Candidate working sizes (H, W), smallest first, keeping the aspect ratio: from the
    smallest that keeps a typical object OBJECT_PIXELS across, up to the original size (or
    `longest` on the long side), in steps of about 1.25x in each dimension."""
    h, w = original
    low = min(1.0, OBJECT_PIXELS / diameter) if diameter else 0.0  # no objects: smallest
    low = max(low, SHORTEST / min(h, w))
    high = 1.0 if longest is None else min(1.0, longest / max(h, w))
    low = min(low, high)
    scales = [low * 1.25**k for k in range(int(math.log(high / low, 1.25)) + 1)] + [high]
    sizes = []
    for scale in scales:
        size = round_to((h * scale, w * scale), stride)
        if size not in sizes:
            sizes.append(size)
    return sizes


def affordable(seconds, steps_per_epoch, budget):
    """Epochs a budget buys at `seconds` per training step (validation: about a tenth more)."""
    return int(budget / (1.1 * seconds * steps_per_epoch))


def needed_epochs(steps_per_epoch):
    return max(MIN_EPOCHS, math.ceil(MIN_UPDATES / steps_per_epoch))


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


def plan(candidates, timing, steps_per_epoch, budget, probes=3):
    """The largest candidate size (H, W) whose predicted epochs meet needed_epochs. Steps are
    timed at the smallest candidate, then at each size the predictions pick, until a pick was
    measured already (at most `probes` timings). Returns (size, predicted epochs,
    {(H, W): measured seconds per step})."""
    need, measured, size = needed_epochs(steps_per_epoch), {}, candidates[0]
    for _ in range(probes):
        measured[tuple(size)] = timing(size)
        seconds = step_model(measured)
        fitting = [
            c for c in candidates
            if affordable(seconds(c[0] * c[1]), steps_per_epoch, budget) >= need
        ]
        size = fitting[-1] if fitting else candidates[0]
        if tuple(size) in measured:
            break
    return size, affordable(seconds(size[0] * size[1]), steps_per_epoch, budget), measured
