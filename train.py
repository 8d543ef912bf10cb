"""Train the U-Net on work/imgs_train.npy and save everything predict.py needs.

    python train.py                       # the kit's defaults, fold 0 of 5
    python train.py --fold all            # every fold: an ensemble, tuned out of fold
    python train.py --preset tutorial     # the 2017 Keras tutorial's recipe
    python train.py --patch 256           # 256x256 patches of large images, own scale

Writes into --workdir/model/: fold<i>.keras (the network, with its working size and pixel
statistics inside), config.json (threshold, minimum area, scores...: kit/config.py),
history_fold<i>.csv and curves.png (every epoch), validation.csv (each validation frame's
Dice), tuning.csv (the scores the threshold and minimum area were picked from), oof.npz (the
out-of-fold probabilities; with --gate, each frame's presence too), and backup_fold<i>/ until
the run completes (for --resume).
"""

import dataclasses
import gc
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from kit import arrays, budget, cli, config, dataset, encoders, images, metrics, model, training
from kit.files import UserError, atomic_path

import keras  # noqa: E402  (after kit: TensorFlow's start-up noise is hidden there)

log = logging.getLogger(__name__)
TRAINING_SHARE = 0.95  # of --time-limit, where no step was timed; the rest for what follows


@dataclasses.dataclass
class Frames:
    """The training set as data.py wrote it (images, masks, subjects, each image's own size),
    and as the network sees it (x, y at the working size, pixel statistics, scale)."""

    images: np.ndarray
    masks: np.ndarray
    subjects: np.ndarray
    sizes: np.ndarray
    mixed: bool
    x: np.ndarray = None
    y: np.ndarray = None
    mean: float = 0.0
    std: float = 1.0
    scale: list = (1.0, 1.0)


def add_recipe_flags(p):
    g = p.add_argument_group("the recipe")
    g.add_argument("--preset", choices=sorted(training.PRESETS),
                   help="a named recipe, whose values become the defaults")
    g.add_argument("--epochs", type=int,
                   help="most epochs per fold (default: 60; under --time-limit, as many as fit, "
                   "uncapped)")
    g.add_argument("--batch-size", type=int, default=16, help="global batch size")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of Adam")
    g.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="learning-rate schedule over the planned epochs")
    g.add_argument("--loss", choices=model.LOSS_NAMES, default="bce_dice",
                   help="training loss (label masks: binary names mean their categorical twins)")
    g.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="working size (default: from the size of the masks)")
    g.add_argument("--width", type=int, default=16, help="filters of the first level (doubling)")
    g.add_argument("--depth", type=int, default=4, help="number of down-sampling levels")
    g.add_argument("--dropout", type=float, default=0.1, help="spatial dropout at the bottleneck")
    g.add_argument("--no-batchnorm", dest="batchnorm", action="store_false",
                   help="plain convolutions")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the images as they are")
    g.add_argument("--patch", type=int, default=0, metavar="SIZE",
                   help="train on random SIZE x SIZE patches at the images' own scale")
    g.add_argument(
        "--weights", type=Path, metavar="FILE",
        help="initial weights (.weights.h5 or .keras, e.g. an earlier fold0.keras); "
        "layers that do not fit start fresh; never downloaded")
    g.add_argument("--encoder", choices=["none", *encoders.ENCODERS], default="none",
                   help="U-Net on this keras.applications backbone (none: the kit's own U-Net)")
    g.add_argument("--encoder-weights", metavar="FILE|imagenet",
                   help="the backbone's no-top ImageNet weights file (imagenet: download them)")
    g.add_argument("--freeze-encoder-epochs", type=int, default=0, metavar="N",
                   help="train the decoder alone for the first N epochs")
    g.add_argument("--ema", action="store_true",
                   help="validate, keep and save the moving average of the weights")
    g.add_argument("--gate", action="store_true",
                   help="also predict whether an image holds any mask, and empty those it doubts")


def add_validation_flags(p):
    g = p.add_argument_group("validation and post-processing")
    g.add_argument("--folds", type=int, default=5, help="subject-grouped folds")
    g.add_argument(
        "--fold", help="fold to train, or 'all' for an ensemble (default: 0; under --time-limit, "
        "as many folds as the budget trains 60 epochs each)")
    g.add_argument(
        "--patience", type=int,
        help="epochs without validation gain before stopping (default: 15; under "
        "--time-limit none, and a given one waits for half the planned epochs)")
    g.add_argument("--no-tune", dest="tune", action="store_false",
                   help="keep threshold 0.5 and no minimum area instead of tuning them")
    g.add_argument("--no-tta", dest="tta", action="store_false",
                   help="no flip test-time augmentation")


def add_run_flags(p):
    g = p.add_argument_group("the run")
    g.add_argument("--time-limit", type=float, default=0,
                   help="seconds for the whole run, which then sizes and fills it; 0: none")
    g.add_argument("--precision", default="auto",
                   choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                   help="auto: bf16 where the hardware has it, float16 on older GPUs")
    g.add_argument("--gpus", type=int, default=0, help="train on this many GPUs (MirroredStrategy)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run")
    g.add_argument("--seed", type=int, default=42, help="random seed")
    g.add_argument("--tensorboard", action="store_true", help="also log to model/tensorboard/")
    g.add_argument("--summary", action="store_true",
                   help="print the model (layers, parameters, receptive field) and exit")


def get_args(argv=None):
    p = cli.parser(__doc__)
    for add in (add_recipe_flags, add_validation_flags, add_run_flags):
        add(p)
    preset = p.parse_known_args(argv)[0].preset
    if preset:  # the recipe's values become the defaults: flags given explicitly still win
        p.set_defaults(**training.PRESETS[preset])
    return p.parse_args(argv)


def named_folds(args):
    """The folds --fold names (one, or all), or None where the budget is to decide."""
    if args.fold is None:
        return None
    if args.fold != "all" and not (args.fold.isdigit() and int(args.fold) < args.folds):
        raise UserError(f"--fold {args.fold}: give a fold from 0 to {args.folds - 1}, or 'all'")
    return list(range(args.folds)) if args.fold == "all" else [int(args.fold)]


def folds_to_train(args, named):
    """--fold's folds, or by default the first folds the budget trains well (kit/budget.py):
    those of the interrupted run --resume continues, fold 0 alone without a time limit."""
    if named is None:
        plan = args.plan or {}
        args.budget_folds = interrupted_option(args, "--budget-folds") if args.resume else None
        if not args.budget_folds and "step_seconds" in plan:
            args.budget_folds = budget.folds(plan["step_seconds"], plan["steps_per_epoch"],
                                             plan["seconds"], plan["fixed_seconds"], args.folds)
        args.budget_folds = args.budget_folds or 1
        if args.budget_folds > 1 and "step_seconds" in plan:
            each = budget.affordable(plan["step_seconds"], plan["steps_per_epoch"],
                                     plan["seconds"] / args.budget_folds, plan["fixed_seconds"])
            log.info(f"{args.budget_folds} folds: the budget trains each about {each} epochs "
                     f"(--fold to choose)")
    todo = named or list(range(args.budget_folds))
    for f in todo:
        backup = args.workdir / "model" / f"backup_fold{f}"
        if (backup / "state.json").exists() and not args.resume:
            raise UserError(f"{backup} holds an interrupted run: pass --resume to continue it, "
                            f"or delete that folder to start afresh")
    return todo


def check_encoder_flags(args):
    if args.encoder == "none" and (args.encoder_weights or args.freeze_encoder_epochs):
        raise UserError(f"--encoder-weights and --freeze-encoder-epochs are for a pretrained "
                        f"encoder: add --encoder NAME ({', '.join(encoders.ENCODERS)})")
    if args.freeze_encoder_epochs < 0:
        raise UserError(f"--freeze-encoder-epochs {args.freeze_encoder_epochs}: give 0 or more")
    if args.encoder != "none" and not args.encoder_weights:
        log.warning(f"--encoder {args.encoder} without --encoder-weights: the backbone starts "
                    f"from random weights")


def check_gate_flags(args):
    """--gate judges whole images of binary masks: "is there anything" of one class."""
    if args.gate and args.classes > 1:
        raise UserError(f"--gate is for binary masks, these have {args.classes} classes: "
                        f"drop --gate, or run data.py without --classes")
    if args.gate and args.patch:
        raise UserError(f"--gate judges whole images, --patch {args.patch} trains on patches: "
                        f"drop one of them")


def stride(args):
    """What the working size's sides must be multiples of: the kit's U-Net halves them `depth`
    times, every encoder 5 times."""
    return encoders.STRIDE if args.encoder != "none" else 2**args.depth


def working_size(args, f, strategy, seconds):
    """(H, W) the network trains at: --patch, --image-size, or planned (see kit/budget.py) from
    the objects and, with a time limit, from training steps timed here within `seconds`."""
    if not (args.patch or args.image_size):
        return planned_size(args, f, strategy, seconds)
    size = [args.patch] * 2 if args.patch else list(args.image_size)
    if size[0] % stride(args) or size[1] % stride(args):
        flag = f"--patch {args.patch}" if args.patch else f"--image-size {size[0]} {size[1]}"
        why = "2^depth" if args.encoder == "none" else f"the stride of --encoder {args.encoder}"
        raise UserError(f"{flag} must be a multiple of {stride(args)} ({why})")
    return size, None


def interrupted_option(args, name):
    """An option of the interrupted run --resume continues (its working size, its number of
    folds): never planned anew."""
    for state in sorted((args.workdir / "model").glob("backup_fold*/state.json")):
        return json.loads(state.read_text())["options"].get(name)
    return None


def planned_size(args, f, strategy, seconds):
    """The objects' size (kit/budget.py), moved by training steps timed here when there is a
    time budget: larger where steps are fast, smaller where it would not buy enough epochs."""
    if args.resume and (size := interrupted_option(args, "--input-size")):
        return size, None
    sizes = f.sizes if f.mixed else None
    floor, across = budget.default_size(f.masks, args.time_limit, stride(args), sizes, args.classes)
    plan = {"mask_diameter": round(across, 1), "objects_size": floor}
    objects = f"masks {across:.0f} px across"
    if seconds <= 0:
        log.info(f"working size {floor[1]}x{floor[0]}: {objects}")
        return floor, plan
    candidates = budget.size_range(np.median(f.sizes, axis=0), stride(args), floor, across)
    frames = round(len(f.images) * (1 - 1 / args.folds))  # of a training fold
    steps = dataset.steps_per_epoch(frames, args.batch_size, args.augment)
    warmups = []

    def timing(size):
        step, warmup = training.seconds_per_step(args, size, f.images, f.masks, sizes, strategy)
        warmups.append(warmup)
        return step

    size, step, measured = budget.plan(floor, candidates, timing, steps, seconds)
    fixed = 1.5 * max(warmups)  # a fold compiles its training and validation steps
    epochs = budget.affordable(step, steps, seconds, fixed)
    timed = {f"{w}x{h}": round(t, 4) for (h, w), t in measured.items()}
    plan.update(seconds_per_step=timed, step_seconds=step, steps_per_epoch=steps,
                fixed_seconds=round(fixed, 1), predicted_epochs=epochs, seconds=round(seconds))
    log.info(f"working size {size[1]}x{size[0]}: {objects} ({floor[1]}x{floor[0]} for them); "
             f"steps of {args.batch_size} took "
             f"{', '.join(f'{t:.2f} s at {hw}' for hw, t in timed.items())}: "
             f"about {epochs} epochs of {steps} steps in {seconds:.0f} s")
    return size, plan


def load_frames(args):
    images_, masks, subjects = arrays.load_training_set(args.workdir)
    sizes = arrays.load_sizes(args.workdir, "train", len(images_))  # None: one size
    own = sizes if sizes is not None else np.tile(images_.shape[1:3], (len(images_), 1))
    return Frames(images_, masks, subjects, own, sizes is not None)


def to_working_size(args, f):
    """Images and masks as the network sees them, their pixel statistics, and the scale from
    original to working size. Patches are cut from the images as they are, while training."""
    if args.patch:
        f.x, f.y = f.images, f.masks
        f.mean, f.std = dataset.pixel_statistics(f.images, f.sizes)
        return
    crop = f.sizes if f.mixed else None
    f.x = images.resize_stack(f.images, args.input_size, "area", crop=crop)
    f.y = dataset.resize_masks(f.masks, args.input_size, args.classes, crop)
    f.mean, f.std = float(f.x.mean()), float(f.x.std()) or 1.0
    f.scale = (np.array(args.input_size) / np.median(f.sizes, axis=0)).round(6).tolist()


def resolve_budget_defaults(args):
    """Under a time limit the budget decides the epochs (None: no cap unless --epochs gives one),
    and nothing stops early by default: the schedule spans the planned epochs, and the best epoch
    is kept."""
    if not args.time_limit:
        args.epochs = 60 if args.epochs is None else args.epochs
        args.patience = 15 if args.patience is None else args.patience


def print_summary(args):
    outputs = model.outputs_for(args.classes)
    if args.encoder != "none":  # random weights: the summary needs no weights file
        net = encoders.build(args.encoder, args.input_size, args.channels, outputs,
                             decoder_width=args.width,
                             head=model.presence_head if args.gate else None)
        field = f"encoder {args.encoder}, stride {encoders.STRIDE}"
    else:
        net = model.build_unet(args.input_size, args.channels, outputs, args.width, args.depth,
                               args.dropout, args.batchnorm, gate=args.gate)
        field = model.receptive_field(args.depth)
        field = f"receptive field {field}x{field} pixels of the input"
    net.summary()
    print(f"input {args.input_size[1]}x{args.input_size[0]}: {net.count_params():,} parameters, "
          f"{field}")


def reserved_seconds(args, frames):
    """Seconds of --time-limit kept for what follows the training (the out-of-fold predictions
    of `frames` validation frames, tuning, records), so that the run ends within the limit:
    estimated from the step timed by the plan, else a fixed share."""
    plan = args.plan or {}
    if "step_seconds" not in plan:
        return (1 - TRAINING_SHARE) * args.time_limit
    seconds = budget.reserve(plan["step_seconds"], args.batch_size, frames, args.tta)
    return min(seconds, args.time_limit / 2)


def train_folds(args, todo, f, started, strategy):
    """Train each fold, the folds sharing the budget evenly; return the out-of-fold
    probabilities, presence (None without --gate), their frames, and the folds."""
    folds = dataset.subject_folds(f.subjects, args.folds, args.seed)
    kept = reserved_seconds(args, np.bincount(folds, minlength=args.folds)[todo].max())
    end, begin = started + args.time_limit - kept, time.time()
    if args.time_limit:
        log.info(f"training until {end - started:.0f} s of the {args.time_limit:.0f} s; "
                 f"{kept:.0f} s kept for out-of-fold predictions and records")
    probs, presence, index = [], [], []
    for n, fold in enumerate(todo):
        deadline = begin + (end - begin) * (n + 1) / len(todo) if args.time_limit else 0
        train, val = folds != fold, folds == fold
        log.info(f"fold {fold}: {train.sum()} training, {val.sum()} validation frames "
                 f"(subjects {sorted(set(f.subjects[val].tolist()))})")
        clock = time.time()
        training.train_fold(args, fold, (f.x[train], f.y[train], f.sizes[train]),
                            (f.x[val], f.y[val], f.sizes[val]), f.mean, f.std, deadline, strategy)
        # A fold's leftovers (its model, fit's objects) are never collected: a garbage collection
        # of them (2,594 objects) once stalled the next fold for 31 s; in 600-s runs, 15-45 s.
        gc.freeze()
        args.seconds["training"].append(round(time.time() - clock, 1))
        p, q = training.out_of_fold(args, fold, f.images[val], f.sizes[val], f.mixed)
        gc.freeze()  # and those of the model loaded for the out-of-fold predictions
        probs.append(p)
        presence.append(q)
        index.append(np.flatnonzero(val))
    presence = np.concatenate(presence) if args.gate else None
    return np.concatenate(probs), presence, np.concatenate(index), folds


def evaluate(args, probs, presence, index, folds, f, todo):
    """Tune and score the out-of-fold predictions, and record them for the report."""
    truth = f.masks[index]
    original = np.prod(np.median(f.sizes, axis=0)) / np.prod(args.input_size)
    pixel_area = 1.0 if args.patch else float(original)
    # Tiled probabilities lie on the canvas already; whole-image ones go back to each own size.
    place = f.sizes[index] if f.mixed and not args.patch else None
    post, grid, pred, scores, untuned = training.evaluate(args, probs, truth,
                                                          truth if args.patch else f.y[index],
                                                          pixel_area, place, presence)
    model_dir = args.workdir / "model"
    with atomic_path(model_dir / "oof.npz") as tmp:  # for stacking, ensembling, tuning by hand
        gate = {} if presence is None else {"presence": presence}
        np.savez(tmp, index=index, probs=probs.astype(np.float16), **gate)
    frames = {
        "index": index,
        "subject": f.subjects[index],
        "fold": folds[index],
        "truth_area": truth.reshape(len(truth), -1).sum(1),
        "pred_area": pred.reshape(len(pred), -1).sum(1),
        "dice": metrics.dice_per_image(pred, truth)
    }
    training.save_records(model_dir, frames, grid, todo)
    return post, scores, untuned


def save_config(args, todo, f, precision, result):
    post, scores, untuned = result
    settings = {
        k: v
        for k, v in vars(args).items() if k not in ("raw", "workdir", "plan", "seconds")
    }
    class_scores = {c: {"dice": d, "iou": j} for c, (d, j) in scores.items()}
    config.save(
        args.workdir / "model",
        config.Config(folds=[f"fold{n}.keras" for n in todo], **post, tta=args.tta, scale=f.scale,
                      tile=args.patch, original_size=list(f.images.shape[1:3]),
                      validation_dice=metrics.overall(scores), validation_dice_untuned=untuned,
                      class_scores=class_scores, precision=precision, plan=args.plan,
                      seconds=args.seconds, settings=settings))
    for fold in todo:  # the run is complete: nothing left to resume
        shutil.rmtree(args.workdir / "model" / f"backup_fold{fold}", ignore_errors=True)
    log.info(f"per-class scores on validation images (mean over images):\n"
             f"{metrics.format_class_scores(scores)}")
    gate = f", presence threshold {post['presence_threshold']:.1f}" if args.gate else ""
    log.info(f"validation Dice {untuned:.4f} at threshold 0.5; {metrics.overall(scores):.4f} with "
             f"threshold {post['threshold']:.2f}, minimum area {post['min_area']} px{gate} tuned "
             f"on these same frames")


def main(argv=None):
    args = get_args(argv)
    cli.setup_logging(args)
    started = time.time()
    named = named_folds(args)
    check_encoder_flags(args)
    keras.utils.set_random_seed(args.seed)
    precision = training.choose_precision(args.precision)
    keras.mixed_precision.set_global_policy(precision)
    strategy = training.distribution(args.gpus)
    f = load_frames(args)
    args.classes = arrays.load_classes(args.workdir)
    args.channels = f.images.shape[3] if f.images.ndim == 4 else 1
    args.loss = model.loss_name(args.loss, args.classes)
    check_gate_flags(args)
    resolve_budget_defaults(args)
    if args.summary:
        args.input_size = working_size(args, f, strategy, 0)[0]  # no steps timed
        return print_summary(args)
    args.class_weights = dataset.class_weights(f.masks, args.classes, f.sizes)
    # Planned as one fold's time unless --fold names several: by default the plan's epochs
    # then decide how many folds share the budget.
    left = TRAINING_SHARE * args.time_limit - (time.time() - started)
    seconds = left / len(named or [0]) if args.time_limit else 0
    args.input_size, args.plan = working_size(args, f, strategy, seconds)
    todo = folds_to_train(args, named)
    h, w = np.median(f.sizes, axis=0).astype(int)
    log.info(f"{len(f.images)} images {w}x{h}{' (median: mixed sizes)' if f.mixed else ''} -> "
             f"{'patches' if args.patch else 'working size'} {args.input_size[1]}x"
             f"{args.input_size[0]}, {args.channels} channel(s), {args.classes} class(es), "
             f"{precision}, loss {args.loss}, {strategy.num_replicas_in_sync} replica(s)")
    to_working_size(args, f)
    (args.workdir / "model").mkdir(parents=True, exist_ok=True)
    args.seconds = {"before training": round(time.time() - started, 1), "training": []}
    probs, presence, index, folds = train_folds(args, todo, f, started, strategy)
    result = evaluate(args, probs, presence, index, folds, f, todo)
    save_config(args, todo, f, precision, result)
    log.info(f"trained in {time.time() - started:.0f} s, {sum(args.seconds['training']):.0f} s of "
             f"them in training -> {args.workdir / 'model'}")


if __name__ == "__main__":
    cli.run(main)
