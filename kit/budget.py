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
for growing, and the shrinking below it.

plan_run is the one entry point: (recipe, options, data, a step timer) -> the run's Plan
(kit/recipe.py). The rest of the time budget is PlanEpochs (kit/callbacks.py), which re-plans
each fold's epochs from the epochs' own pace as they go."""

import dataclasses
import logging
import math
import time

import cv2
import numpy as np

from kit import dataset
from kit.files import UserError
from kit.recipe import EPOCHS, PATIENCE, Plan, loss_name

log = logging.getLogger(__name__)
TRAINING_SHARE = 0.95  # of --time-limit planned for training before any step is timed
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


def plan_size(floor, candidates, timing, steps_per_epoch, budget, probes=3):
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


# ---------------------------------------------------------------- the run's plan


def plan_run(recipe, options, frames, precision, timer, spent, saved=None):
    """The run's Plan: the data's classes, channels, loss and class weights; the working size
    (--patch, --image-size, or planned from the objects and steps timed by `timer(size, plan)`
    within one fold's share of the time limit); the folds (--fold, or as many as the budget
    trains FOLD_EPOCHS each); the epochs and patience; when training must end. spent: seconds
    of the time limit already used. saved: the plan of the interrupted run --resume continues,
    whose size and folds are kept."""
    named = options.named_folds(recipe.folds)
    timed = bool(options.time_limit)
    plan = Plan(size=(), classes=frames.classes, channels=frames.channels,
                loss=loss_name(recipe.loss, frames.classes),
                class_weights=dataset.class_weights(frames.masks, frames.classes, frames.sizes),
                precision=precision, folds=named or (0,),
                epochs=recipe.epochs if recipe.epochs or timed else EPOCHS,
                patience=recipe.patience if recipe.patience is not None or timed else PATIENCE)
    check_gate(recipe, plan)
    if saved:
        plan = dataclasses.replace(plan, size=saved.size, sizing=saved.sizing,
                                   folds=named or saved.folds)
    else:
        seconds = (TRAINING_SHARE * options.time_limit - spent) / len(plan.folds) if timed else 0
        seconds = 0 if options.summary else seconds
        size, sizing = working_size(recipe, plan, frames, options.time_limit, seconds, timer)
        plan = dataclasses.replace(plan, size=tuple(size), sizing=sizing)
        plan = dataclasses.replace(plan, folds=named or budget_folds(recipe, plan))
    return dataclasses.replace(plan, train_until=train_until(recipe, options, plan, frames))


def check_gate(recipe, plan):
    """--gate judges whole images of binary masks: "is there anything" of one class."""
    if recipe.gate and plan.classes > 1:
        raise UserError(f"--gate is for binary masks, these have {plan.classes} classes: "
                        f"drop --gate, or run data.py without --classes")
    if recipe.gate and recipe.patch:
        raise UserError(f"--gate judges whole images, --patch {recipe.patch} trains on patches: "
                        f"drop one of them")


def working_size(recipe, plan, frames, time_limit, seconds, timer):
    """(H, W) the network trains at, and how it was chosen: --patch, --image-size, or planned
    (plan_size) from the objects and, given `seconds`, from training steps timed here."""
    if not (recipe.patch or recipe.image_size):
        return planned_size(recipe, plan, frames, time_limit, seconds, timer)
    size = [recipe.patch] * 2 if recipe.patch else list(recipe.image_size)
    if size[0] % recipe.stride() or size[1] % recipe.stride():
        given = f"--patch {recipe.patch}" if recipe.patch else f"--image-size {size[0]} {size[1]}"
        why = "2^depth" if recipe.encoder == "none" else f"the stride of --encoder {recipe.encoder}"
        raise UserError(f"{given} must be a multiple of {recipe.stride()} ({why})")
    return size, {}


def fold_steps(recipe, frames):
    """Training steps of an epoch of one fold (its training frames: all but one fold's)."""
    training = round(len(frames.images) * (1 - 1 / recipe.folds))
    return dataset.steps_per_epoch(training, recipe.batch_size, recipe.augment)


def planned_size(recipe, plan, frames, time_limit, seconds, timer):
    """The objects' size (default_size), moved by training steps timed within `seconds` (one
    fold's time) when there are any: larger where steps are fast, smaller where it would not buy
    enough epochs."""
    sizes = frames.sizes if frames.mixed else None
    floor, diameter = default_size(frames.masks, time_limit, recipe.stride(), sizes, plan.classes)
    sizing = {"mask_diameter": round(diameter, 1), "objects_size": floor}
    objects = f"masks {diameter:.0f} px across"
    if seconds <= 0:
        log.info(f"working size {floor[1]}x{floor[0]}: {objects}")
        return floor, sizing
    candidates = size_range(np.median(frames.sizes, axis=0), recipe.stride(), floor, diameter)
    steps, warmups = fold_steps(recipe, frames), []

    def timing(size):
        step, warmup = timer(size, plan)
        warmups.append(warmup)
        return step

    size, step, measured = plan_size(floor, candidates, timing, steps, seconds)
    fixed = 1.5 * max(warmups)  # a fold compiles its training and validation steps
    epochs = affordable(step, steps, seconds, fixed)
    timed = {f"{w}x{h}": round(t, 4) for (h, w), t in measured.items()}
    sizing.update(seconds_per_step=timed, step_seconds=step, steps_per_epoch=steps,
                  fixed_seconds=round(fixed, 1), predicted_epochs=epochs, seconds=round(seconds))
    log.info(f"working size {size[1]}x{size[0]}: {objects} ({floor[1]}x{floor[0]} for them); "
             f"steps of {recipe.batch_size} took "
             f"{', '.join(f'{t:.2f} s at {hw}' for hw, t in timed.items())}: "
             f"about {epochs} epochs of {steps} steps in {seconds:.0f} s")
    return size, sizing


def budget_folds(recipe, plan):
    """The first folds the budget trains FOLD_EPOCHS each (see folds); fold 0 alone where no
    step was timed."""
    sizing = plan.sizing
    if "step_seconds" not in sizing:
        return (0,)
    args = sizing["step_seconds"], sizing["steps_per_epoch"]
    n = folds(*args, sizing["seconds"], sizing["fixed_seconds"], recipe.folds)
    if n > 1:
        each = affordable(*args, sizing["seconds"] / n, sizing["fixed_seconds"])
        log.info(f"{n} folds: the budget trains each about {each} epochs (--fold to choose)")
    return tuple(range(n))


def train_until(recipe, options, plan, frames):
    """Seconds after the start by which the training ends (0: no time limit): the time limit,
    less what the out-of-fold predictions, the tuning and the records are expected to take
    (estimated from the timed step, else a fixed share)."""
    if not options.time_limit:
        return 0.0
    sizing = plan.sizing
    if "step_seconds" not in sizing:
        return TRAINING_SHARE * options.time_limit
    fold_of = dataset.subject_folds(frames.subjects, recipe.folds, recipe.seed)
    validation = np.bincount(fold_of, minlength=recipe.folds)[list(plan.folds)].max()
    kept = reserve(sizing["step_seconds"], recipe.batch_size, validation, options.tta)
    return options.time_limit - min(kept, options.time_limit / 2)


def fold_deadline(plan, started, begin, n):
    """When the n-th fold of the run must stop (0: never): the folds share the time from
    `begin` (the start of the first fold) to plan.train_until evenly."""
    if not plan.train_until:
        return 0.0
    end = started + plan.train_until
    return begin + (end - begin) * (n + 1) / len(plan.folds)


def first_guess(plan, steps, deadline):
    """A fold's epochs planned before any is timed, from the steps the plan timed (PlanEpochs
    plans again from the second epoch on); 2 where none was timed."""
    if not deadline or "step_seconds" not in plan.sizing:
        return 2
    return affordable(plan.sizing["step_seconds"], steps, deadline - time.time(),
                      plan.sizing["fixed_seconds"])
