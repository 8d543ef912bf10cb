"""Train the U-Net on work/imgs_train.npy and save everything predict.py needs.

    python train.py                       # the kit's defaults, fold 0 of 5
    python train.py --fold all            # every fold: an ensemble, tuned on out-of-fold predictions
    python train.py --preset tutorial     # the 2017 Keras tutorial, exactly
    python train.py --patch 256           # random 256x256 patches of large images at their own scale

Writes into --workdir/model/: fold<i>.keras, config.json (threshold, minimum area, ...),
history_fold<i>.csv and curves.png (every epoch), validation.csv (each validation frame's
Dice), tuning.csv (the scores the threshold and minimum area were picked from), and
backup_fold<i>/ until the run completes (for --resume, see resume.py).
"""

import json
import math
import shutil
import signal
import sys
import time

import common

tf = common.import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import keras
import numpy as np

import model as unet
import predict
import resume
from common import UserError, log

PRESETS = {
    # The 2017 Keras tutorial: 96x96 squashed input, filters 32..512, transposed convolutions,
    # no batch normalisation or dropout, loss -Dice (smooth 1), Adam 1e-5, batch 32, 20 epochs.
    "tutorial": dict(image_size=[96, 96], width=32, depth=4, batchnorm=False, dropout=0.0, loss="dice",
                     lr=1e-5, batch_size=32, epochs=20, augment=False, schedule="constant",
                     tune=False, tta=False),
}


def get_args(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe; explicit flags still win")
    p.add_argument("--epochs", type=int, default=60, help="most epochs per fold")
    p.add_argument("--batch-size", type=int, default=16, help="global batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of Adam")
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="learning-rate schedule over the planned epochs")
    p.add_argument("--loss", choices=["bce_dice", "dice", "bce", "jaccard", "tversky", "focal_tversky",
                                      "cce_dice", "cce", "weighted_cce", "multiclass_dice"],
                   default="bce_dice", help="training loss (label masks: bce_dice, bce, dice mean their "
                                            "categorical counterparts cce_dice, cce, multiclass_dice)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="working size (default: chosen from the masks and the time limit)")
    p.add_argument("--width", type=int, default=16, help="filters of the first level (doubling per level)")
    p.add_argument("--depth", type=int, default=4, help="number of down-sampling levels")
    p.add_argument("--dropout", type=float, default=0.1, help="spatial dropout at the bottleneck")
    p.add_argument("--no-batchnorm", dest="batchnorm", action="store_false", help="plain convolutions")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="train on the images as they are")
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="keep threshold 0.5 and no minimum area instead of tuning them out-of-fold")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="no flip test-time augmentation")
    p.add_argument("--folds", type=int, default=5, help="subject-grouped folds")
    p.add_argument("--fold", default="0", help="fold to train, or 'all' for an ensemble")
    p.add_argument("--patience", type=int, default=15, help="epochs without validation gain before stopping")
    p.add_argument("--time-limit", type=float, default=0, help="seconds for the whole run; 0: none")
    p.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                   default="auto", help="bf16 where the hardware has it, float16 on older GPUs")
    p.add_argument("--gpus", type=int, default=0, help="train on this many GPUs with MirroredStrategy")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    p.add_argument("--tensorboard", action="store_true", help="also log to model/tensorboard/ (needs tensorboard)")
    p.add_argument("--summary", action="store_true",
                   help="print the model (layers, parameters, receptive field) and exit")
    p.add_argument("--patch", type=int, default=0, metavar="SIZE",
                   help="train on random SIZE x SIZE patches at the images' own scale instead of resizing them")
    p.add_argument("--weights", type=common.Path, metavar="FILE",
                   help="initial weights (.weights.h5 or .keras file, e.g. an earlier run's fold0.keras); "
                        "layers that do not fit start fresh; never downloaded")
    p.set_defaults(batchnorm=True, augment=True, tune=True, tta=True)
    args = p.parse_args(argv)
    if args.preset:
        explicit = {a.dest for a in p._actions if any(opt in (argv or sys.argv[1:]) for opt in a.option_strings)}
        for key, value in PRESETS[args.preset].items():
            if key not in explicit:
                setattr(args, key, value)
    return args


# ---------------------------------------------------------------- hardware

def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_precision(requested):
    if requested != "auto":
        return requested
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        major, _ = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "mixed_bfloat16" if major >= 8 else "mixed_float16" if major >= 7 else "float32"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def distribution(gpus):
    if gpus <= 1:
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU")[:gpus] or tf.config.list_logical_devices("CPU")[:gpus]
    if len(devices) < gpus:
        raise UserError(f"--gpus {gpus} asked for, {len(devices)} found: lower --gpus")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


# ---------------------------------------------------------------- data

def load_training_set(work):
    fix = "run `python data.py` first"
    images = common.load_npy(work / "imgs_train.npy", "image array", fix, mmap=True)
    masks = common.load_npy(work / "imgs_mask_train.npy", "mask array", fix, mmap=True)
    subjects = common.load_npy(work / "imgs_subject_train.npy", "subject array", fix)
    if images.shape[:3] != masks.shape[:3] or len(subjects) != len(images):
        raise UserError(f"the arrays in {work} do not match ({images.shape}, {masks.shape}, "
                        f"{subjects.shape}): run `python data.py` again")
    if images.dtype != np.uint8 or masks.dtype != np.uint8:
        raise UserError(f"the arrays in {work} are not uint8: run `python data.py` again")
    return images, masks, subjects


def choose_image_size(masks, time_limit, depth, sizes=None):
    """Working size from the objects' size: the smallest scale that keeps a typical object
    about 24 pixels across, never above 256 pixels on the long side (or 160 on a tight budget)."""
    h, w = np.median(sizes, axis=0) if sizes is not None else masks.shape[1:3]
    sample = masks[:: max(1, len(masks) // 500)]
    areas = (sample.reshape(len(sample), -1) > 0).sum(1)
    areas = areas[areas > 0]
    diameter = 2 * math.sqrt(np.median(areas) / math.pi) if len(areas) else min(h, w)
    scale = min(1.0, 24 / diameter)
    longest = 160 if 0 < time_limit <= 1200 else 256
    scale = min(max(scale, 64 / min(h, w)), longest / max(h, w))
    step = 2 ** depth
    return [max(step, round(h * scale / step) * step), max(step, round(w * scale / step) * step)]


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
    for i in sorted(order, key=lambda i: -counts[i]):   # largest subjects first: balanced folds
        fold = int(np.argmin(sizes))
        fold_of[unique[i]] = fold
        sizes[fold] += counts[i]
    return np.array([fold_of[s] for s in subjects])


def steps_per_epoch(n, batch_size, augment):
    batch_size = min(batch_size, n)
    return n // batch_size if augment else math.ceil(n / batch_size)


def dataset(images, masks, batch_size, augment, seed, epochs=range(1), classes=1):
    """The batches of every epoch in `epochs`, one epoch after the other. With augment, each epoch
    is shuffled and augmented from (seed, epoch, step) alone, with stateless ops: a resumed run
    sees exactly the batches an uninterrupted one would have."""
    n = len(images)
    batch_size = min(batch_size, n)
    steps = steps_per_epoch(n, batch_size, augment)
    x = tf.constant(images[..., None] if images.ndim == 3 else images)
    y = tf.constant(masks[..., None])
    augmenter = unet.make_augmenter(seed)

    def one_epoch(epoch):
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.argsort(tf.random.stateless_uniform([n], key)) if augment else tf.range(n)
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=augment)
        return tf.data.Dataset.zip((tf.data.Dataset.range(epoch * steps, (epoch + 1) * steps), batches))

    def load(step, index):
        images, masks = tf.cast(tf.gather(x, index), tf.float32), targets(tf.gather(y, index), classes)
        return augmenter(step, images, masks) if augment else (images, masks)

    ds = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(one_epoch)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(epochs) * steps))   # flat_map hides it from Keras
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def targets(masks, classes):
    """Binary masks as they are, label masks one-hot (so that augmentation may blend them)."""
    if classes == 1:
        return tf.cast(masks, tf.float32)
    return tf.one_hot(tf.cast(masks[..., 0], tf.int32), classes + 1)


def batches(ds, batch_size, drop_remainder, augment, seed, classes):
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), targets(y, classes)))
    if augment:
        augmenter = unet.make_augmenter(seed)
        ds = ds.enumerate().map(lambda i, xy: augmenter(i, *xy), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def resize_masks(masks, size, classes, sizes=None):
    """Masks at the working size: area-averaging 0/1 then rounding is a majority vote; label
    masks take the class with the largest area-averaged share of each working pixel."""
    if classes == 1:
        return common.resize_stack(masks, size, "area", crop=sizes)
    shares = [common.resize_stack((np.asarray(masks) == c).view(np.uint8) * np.uint8(255), size, "area", crop=sizes)
              for c in range(classes + 1)]
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
    return np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 1.0).round(4).tolist()


# ---------------------------------------------------------------- patches of large images

def crop_patch(image, mask, size, patch, y, x):
    """A patch x patch crop of an image's own part (size: its H, W), mirrored where the image is smaller."""
    h, w = size
    image, mask = image[y:min(h, y + patch), x:min(w, x + patch)], mask[y:min(h, y + patch), x:min(w, x + patch)]
    pad = [(0, patch - image.shape[0]), (0, patch - image.shape[1])]
    if pad[0][1] or pad[1][1]:
        image = np.pad(image, pad + [(0, 0)] * (image.ndim - 2), mode="symmetric")
        mask = np.pad(mask, pad, mode="symmetric")
    return image, mask


def random_patches(images, masks, sizes, patch, batch_size, seed, classes):
    """An epoch of random patches, as many as the images hold pixels (patches of large images
    are drawn more often), each epoch new ones."""
    areas = sizes.prod(1).astype(float)
    count = max(batch_size, int(areas.sum() // patch ** 2) // batch_size * batch_size)
    rng = np.random.default_rng(seed)

    def generate():
        for i in rng.choice(len(images), count, p=areas / areas.sum()):
            h, w = sizes[i]
            y, x = rng.integers(0, max(1, h - patch + 1)), rng.integers(0, max(1, w - patch + 1))
            image, mask = crop_patch(images[i], masks[i], sizes[i], patch, y, x)
            yield image[..., None] if image.ndim == 2 else image, mask[..., None]

    channels = images.shape[3] if images.ndim == 4 else 1
    ds = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec((patch, patch, channels), tf.uint8), tf.TensorSpec((patch, patch, 1), tf.uint8)))
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    return batches(ds, batch_size, True, True, seed, classes)


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
    pixels = np.concatenate([np.asarray(images[i, :h:2, :w:2], np.float32).ravel()
                             for i, (h, w) in list(enumerate(sizes))[::step]])
    return float(pixels.mean()), float(pixels.std()) or 1.0


def oof_by_tiles(model, images, sizes, args):
    """Out-of-fold probabilities of whole images for a model trained on patches, on their canvas."""
    classes = model.output_shape[-1]
    out = np.zeros((*images.shape[:3], *([classes] if classes > 1 else [])), np.float32)
    for i, (h, w) in enumerate(sizes):
        out[i, :h, :w] = predict.tiled_probabilities([model], images[i, :h, :w], args.patch, args.patch // 4,
                                                     args.batch_size, args.tta)
    return out


def datasets(args, fold, x_train, y_train, x_val, y_val, sizes, first):
    """Training batches of the epochs from `first` on, validation batches, steps per epoch."""
    if not args.patch:
        steps = steps_per_epoch(len(x_train), args.batch_size, args.augment)
        return (dataset(x_train, y_train, args.batch_size, args.augment, args.seed + fold,
                        range(first, args.epochs), args.classes),
                dataset(x_val, y_val, args.batch_size * 2, False, 0, classes=args.classes), steps)
    # Random patches come from a generator: resumption continues with fresh draws, not the same ones.
    train_ds = random_patches(x_train, y_train, sizes[0], args.patch, args.batch_size, args.seed + fold, args.classes)
    steps = int(train_ds.cardinality())
    val_ds = dataset(*grid_patches(x_val, y_val, sizes[1], args.patch), args.batch_size * 2, False, 0,
                     classes=args.classes)
    return train_ds.repeat(), val_ds, steps


def load_initial_weights(model, path):
    """Weights of another run (another data set, size, number of classes or channels): layers
    whose shapes fit are loaded in order, the rest keep their fresh start. The normalisation
    statistics are constants of the model, not weights: they stay this data set's."""
    if not path.exists():
        raise UserError(f"--weights {path} not found: give a .weights.h5 or .keras file (nothing is downloaded)")
    before = [w.copy() for w in model.get_weights()]
    try:
        model.load_weights(path, skip_mismatch=True)
    except (OSError, ValueError) as e:
        raise UserError(f"--weights {path} cannot be loaded ({str(e).splitlines()[0][:120]}): "
                        f"give a .weights.h5 or .keras file saved by Keras 3") from None
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    if not changed:
        raise UserError(f"--weights {path}: no layer fits this network: use weights of the same architecture")
    log.info(f"initial weights from {path}: {changed} of {len(before)} weight tensors changed "
             f"(layers of other shapes start fresh)")


# ---------------------------------------------------------------- callbacks

class StopOnDeadlineOrSignal(keras.callbacks.Callback):
    """Stops after the current step when the time budget is spent or on SIGINT/SIGTERM."""

    def __init__(self, deadline):
        super().__init__()
        self.deadline, self.signalled = deadline, None

    def on_train_begin(self, logs=None):
        self.previous = {sig: signal.signal(sig, self.request) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_train_end(self, logs=None):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def request(self, signum, frame):
        log.warning(f"{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to abort)")
        self.signalled = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_batch_end(self, batch, logs=None):
        if self.signalled or (self.deadline and time.time() > self.deadline):
            self.model.stop_training = True


class PlanEpochs(keras.callbacks.Callback):
    """Fits the schedule into the time limit: times the second epoch (the first also
    compiles), plans how many epochs remain, and stops when the plan is done."""

    def __init__(self, args, deadline):
        super().__init__()
        self.args, self.deadline, self.planned = args, deadline, not deadline

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if not self.planned and epoch >= 1:
            left = max(0.0, self.deadline - time.time())
            fits = epoch + 1 + int(left / (time.time() - self.started))
            self.args.planned_epochs = max(epoch + 1, min(self.args.epochs, fits))
            self.planned = True
            log.debug(f"planned {self.args.planned_epochs} epochs")
        if logs is not None:
            logs["planned_epochs"] = self.args.planned_epochs
        if epoch + 1 >= self.args.planned_epochs:
            self.model.stop_training = True


class PlotCurves(keras.callbacks.Callback):
    """Redraws the curves PNG from the history CSV after every epoch (put it after the CSVLogger)."""

    def __init__(self, history, png):
        super().__init__()
        self.history, self.png = history, png

    def on_epoch_end(self, epoch, logs=None):
        import report
        report.plot_curves([self.history], self.png)


def tensorboard(log_dir):
    try:
        import tensorboard  # noqa: F401  (Keras needs it to write summaries, and fails only at the first epoch's end)
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: `pip install tensorboard`") from None
    return keras.callbacks.TensorBoard(log_dir)


def lr_schedule(args):
    def schedule(epoch, lr):
        if args.schedule == "constant":
            return args.lr
        warmup = 2
        if epoch < warmup:
            return args.lr * (epoch + 1) / warmup
        progress = min(1.0, (epoch - warmup) / max(1, args.planned_epochs - warmup))
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
    return schedule


# ---------------------------------------------------------------- one fold

def resume_options(args, size):
    """The options that a resumed run must share with the interrupted one."""
    return {"--image-size": list(size), "--width": args.width, "--depth": args.depth, "--dropout": args.dropout,
            "--no-batchnorm": not args.batchnorm, "--loss": args.loss, "--lr": args.lr,
            "--schedule": args.schedule, "--batch-size": args.batch_size, "--epochs": args.epochs,
            "--patience": args.patience, "--folds": args.folds, "--seed": args.seed, "--patch": args.patch,
            "--no-augment": not args.augment, "--precision": keras.mixed_precision.global_policy().name}


def train_fold(args, fold, x_train, y_train, x_val, y_val, mean, std, deadline, strategy, sizes=(None, None)):
    """Train (or, with --resume, go on training) one fold and save it as fold<i>.keras."""
    model_dir = args.workdir / "model"
    final = model_dir / f"fold{fold}.keras"
    keras.utils.set_random_seed(args.seed + fold)   # each fold on its own: a resumed fold never depends on another
    with strategy.scope():
        model = unet.build_unet(args.input_size, args.channels, args.outputs, args.width, args.depth, args.dropout,
                                args.batchnorm, mean, std)
        if args.weights:
            load_initial_weights(model, args.weights)
        loss = unet.loss_for(args.loss, args.classes, args.class_weights)
        model.compile(keras.optimizers.Adam(args.lr), loss, metrics=[unet.dice_metric(args.classes)])
    data = {"training frames": len(x_train), "validation frames": len(x_val), "pixel mean": mean, "pixel std": std,
            "channels": args.channels, "classes": args.classes}
    steps = steps_per_epoch(len(x_train), args.batch_size, args.augment) if not args.patch else 0
    state = resume.TrainingState(model_dir / f"backup_fold{fold}", {**resume_options(args, x_train.shape[1:3]), **data},
                                 steps, args.patience)
    first = 0
    if args.resume and state.saved():
        with strategy.scope():   # where the optimizer's variables belong
            first = state.restore(model)
        if state.state["done"] and final.exists():
            log.info(f"fold {fold}: trained by the interrupted run, {final}")
            return keras.models.load_model(final, compile=False, safe_mode=True)
        log.info(f"fold {fold}: resuming after epoch {first}")
    elif args.resume:
        log.info(f"fold {fold}: no interrupted run in {state.folder}, starting afresh")

    history = model_dir / f"history_fold{fold}.csv"
    if first:
        resume.truncate_history(history, first)
    args.planned_epochs = int(state.state["logs"].get("planned_epochs", args.epochs))
    planner = PlanEpochs(args, deadline)
    planner.planned = planner.planned or first > 0   # a resumed run keeps its plan
    stop = StopOnDeadlineOrSignal(deadline)
    callbacks = [
        planner,
        keras.callbacks.LearningRateScheduler(lr_schedule(args)),
        keras.callbacks.CSVLogger(history, append=first > 0),
        PlotCurves(history, model_dir / "curves.png"),
        state,   # after the logger: a kill between the two repeats an epoch rather than skipping one
        stop,
    ]
    if args.tensorboard:
        callbacks.append(tensorboard(model_dir / "tensorboard" / f"fold{fold}"))
    if first < args.epochs and not state.state["stopped"] and not state.state["done"]:
        train_ds, val_ds, steps = datasets(args, fold, x_train, y_train, x_val, y_val, sizes, first)
        state.steps_per_epoch = steps
        verbose = 0 if args.quiet else 1 if sys.stdout.isatty() else 2
        model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, initial_epoch=first,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
    if stop.signalled:
        log.warning(f"{stop.signalled}: fold {fold} stopped; its {state.state['epoch']} complete epochs are "
                    f"saved in {state.folder}: run the same command with --resume to continue")
        raise KeyboardInterrupt
    state.load_best(model)   # else no epoch completed (time limit): the model as it is
    with common.atomic_path(final) as tmp:
        model.save(tmp)
    state.save(done=True)
    return model


# ---------------------------------------------------------------- records

def save_validation_details(model_dir, index, subjects, folds, truth, final, dice, grid, todo):
    """What the report and visualize.py show: each validation frame's Dice, the tuning grid,
    and the curves of every fold of this run."""
    import pandas as pd
    import report
    frames = pd.DataFrame({"index": index, "subject": subjects[index], "fold": folds[index],
                           "truth_area": truth.reshape(len(truth), -1).sum(1),
                           "pred_area": final.reshape(len(final), -1).sum(1), "dice": dice})
    for name, table in (("validation.csv", frames),
                        ("tuning.csv", pd.DataFrame(grid, columns=["threshold", "min_area", "dice"]))):
        with common.atomic_path(model_dir / name) as tmp:
            table.to_csv(tmp, index=False)
    report.plot_curves([model_dir / f"history_fold{f}.csv" for f in todo], model_dir / "curves.png")


def receptive_field(depth, convs=2):
    """Width of the widest window of input pixels that one output pixel of the U-Net sees.

    Follows an interval of pixels back through the layers: a 3x3 convolution widens it by one
    pixel each side, a 2x2 pooling doubles it, a 2x2 stride-2 transposed convolution halves it;
    a skip connection joins the encoder's interval to the deeper path's. The halving rounds to
    whole pixels, so the field depends on the pixel's position modulo 2^depth: the widest is returned."""
    def encoder(level, lo, hi):     # interval at the output of encoder block `level` -> the input image
        lo, hi = lo - convs, hi + convs
        return (lo, hi) if level == 0 else encoder(level - 1, 2 * lo, 2 * hi + 1)

    def decoder(level, lo, hi):     # interval at the output of decoder block `level` (depth: the bottleneck)
        if level == depth:
            return encoder(depth, lo, hi)
        lo, hi = lo - convs, hi + convs
        (a, b), (c, d) = encoder(level, lo, hi), decoder(level + 1, lo // 2, hi // 2)
        return min(a, c), max(b, d)

    return max(hi - lo + 1 for lo, hi in (decoder(0, x, x) for x in range(2 ** depth)))


def print_summary(args, size):
    model = unet.build_unet(size, args.channels, args.outputs, args.width, args.depth, args.dropout, args.batchnorm)
    model.summary()
    field = receptive_field(args.depth)
    print(f"input {size[1]}x{size[0]}: {model.count_params():,} parameters, "
          f"receptive field {field}x{field} pixels of the input")


# ---------------------------------------------------------------- main

def main():
    args = get_args()
    common.setup_logging(args)
    started = time.time()
    if args.fold != "all" and not (args.fold.isdigit() and int(args.fold) < args.folds):
        raise UserError(f"--fold {args.fold}: give a fold from 0 to {args.folds - 1}, or 'all'")
    todo = range(args.folds) if args.fold == "all" else [int(args.fold)]
    model_dir = args.workdir / "model"
    leftover = [model_dir / f"backup_fold{f}" for f in todo if (model_dir / f"backup_fold{f}" / resume.STATE).exists()]
    if leftover and not args.resume:
        raise UserError(f"{leftover[0]} holds an interrupted run: pass --resume to continue it, "
                        f"or delete that folder to start afresh")
    keras.utils.set_random_seed(args.seed)
    precision = choose_precision(args.precision)
    keras.mixed_precision.set_global_policy(precision)
    if args.gpus > 1 and not tf.config.list_physical_devices("GPU"):
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * args.gpus)
    strategy = distribution(args.gpus)

    images, masks, subjects = load_training_set(args.workdir)
    sizes = common.load_sizes(args.workdir, "train", len(images))   # None: all of the arrays' size
    own_sizes = sizes if sizes is not None else np.tile(images.shape[1:3], (len(images), 1))
    args.classes = common.load_classes(args.workdir)
    args.channels = images.shape[3] if images.ndim == 4 else 1
    args.outputs = 1 if args.classes == 1 else args.classes + 1
    if args.classes > 1:   # the default (binary) loss names stand for their categorical counterparts
        args.loss = unet.CATEGORICAL_COUNTERPART.get(args.loss, args.loss)
    size = [args.patch] * 2 if args.patch else args.image_size or choose_image_size(masks, args.time_limit,
                                                                                    args.depth, sizes)
    if size[0] % 2 ** args.depth or size[1] % 2 ** args.depth:
        flag = f"--patch {args.patch}" if args.patch else f"--image-size {size[0]} {size[1]}"
        raise UserError(f"{flag} must be a multiple of {2 ** args.depth} (2^depth)")
    args.input_size = size
    if args.summary:
        return print_summary(args, size)
    h, w = np.median(own_sizes, axis=0).astype(int)
    log.info(f"{len(images)} images {w}x{h}{' (median: mixed sizes)' if sizes is not None else ''} -> "
             f"{'patches' if args.patch else 'working size'} {size[1]}x{size[0]}, {args.channels} channel(s), "
             f"{args.classes} class(es), {precision}, loss {args.loss}, {strategy.num_replicas_in_sync} replica(s)")
    if args.patch:   # the images as they are; patches are cut while training
        x, y = images, masks
        mean, std = pixel_statistics(images, own_sizes)
        scale = [1.0, 1.0]
    else:
        x = common.resize_stack(images, size, "area", crop=sizes)
        y = resize_masks(masks, size, args.classes, sizes)
        mean, std = float(x.mean()), float(x.std()) or 1.0
        scale = (np.array(size) / np.median(own_sizes, axis=0)).round(6).tolist()
    args.class_weights = class_weights(y, args.classes, own_sizes if args.patch else None)

    folds = subject_folds(subjects, args.folds, args.seed)
    model_dir.mkdir(parents=True, exist_ok=True)
    probs_oof, val_index = [], []
    for n, fold in enumerate(todo):
        fold_deadline = started + args.time_limit * (n + 1) / len(todo) if args.time_limit else 0
        train, val = folds != fold, folds == fold
        log.info(f"fold {fold}: {train.sum()} training, {val.sum()} validation frames "
                 f"(subjects {sorted(set(subjects[val].tolist()))})")
        train_fold(args, fold, x[train], y[train], x[val], y[val], mean, std, fold_deadline, strategy,
                           sizes=(own_sizes[train], own_sizes[val]))
        # Validate the saved file itself, outside any distribution strategy, exactly as predict.py will.
        saved = keras.models.load_model(model_dir / f"fold{fold}.keras", compile=False)
        if args.patch:
            probs_oof.append(oof_by_tiles(saved, images[val], own_sizes[val], args))
        else:
            probs_oof.append(predict.probabilities([saved], images[val], args.batch_size * 4, args.tta, args.quiet,
                                                   sizes=None if sizes is None else sizes[val]))
        val_index.append(np.flatnonzero(val))

    probs = np.concatenate(probs_oof)
    index = np.concatenate(val_index)
    with common.atomic_path(model_dir / "oof.npz") as tmp:   # for stacking, ensembling or tuning by hand
        np.savez(tmp, index=index, probs=probs.astype(np.float16))
    truth = masks[index]
    threshold, min_area, grid = 0.5, 0, []
    if args.tune and args.classes == 1:
        pixel_area = 1.0 if args.patch else float(np.prod(np.median(own_sizes, axis=0)) / (size[0] * size[1]))
        threshold, min_area = predict.tune_postprocessing(probs, truth if args.patch else y[index], pixel_area, grid)
    # Tiled probabilities lie on the canvas already; whole-image ones go back to each image's size.
    place = None if args.patch or sizes is None else sizes[index]
    pred = predict.final_masks(probs, truth.shape[1:3], threshold, min_area, sizes=place)
    scores = common.class_scores(pred, truth, args.classes)
    score = common.mean_dice(pred, truth) if args.classes == 1 else float(np.mean([d for d, _ in scores.values()]))
    save_validation_details(model_dir, index, subjects, folds, truth, pred, common.dice_per_image(pred, truth),
                            grid, todo)
    config = {"folds": [f"fold{f}.keras" for f in todo], "threshold": threshold, "min_area": min_area,
              "tta": args.tta, "classes": args.classes, "validation_dice": score, "precision": precision,
              "scale": scale, "tile": args.patch, "original_size": list(images.shape[1:3]),
              "class_scores": {c: {"dice": d, "iou": j} for c, (d, j) in scores.items()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("raw", "workdir")}}
    with common.atomic_path(model_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2, default=str))
    for fold in todo:   # the run is complete: nothing left to resume
        shutil.rmtree(model_dir / f"backup_fold{fold}", ignore_errors=True)
    log.info(f"per-class scores on {len(index)} validation images (mean over images):\n"
             f"{common.format_class_scores(scores)}")
    log.info(f"validation Dice {score:.4f} (threshold {threshold:.2f}, minimum area {min_area} px) "
             f"in {time.time() - started:.0f} s -> {model_dir}")


if __name__ == "__main__":
    common.run(main)
