"""Training: the hardware's precision and devices, one fold's model trained (or resumed) and
saved, the out-of-fold predictions of a run, and the threshold, minimum area and scores
tuned and measured on them."""

import gc
import logging
import math
import os
import sys
import time

import numpy as np

from kit import budget, callbacks, dataset, encoders, figures, inference, metrics, model
from kit.cli import import_tensorflow
from kit.files import UserError, atomic_path
from kit.images import resize_stack

tf = import_tensorflow()
import keras  # noqa: E402

log = logging.getLogger(__name__)
PRESETS = {
    # The 2017 Keras tutorial: 96x96 squashed input, filters 32..512, transposed convolutions,
    # no batch normalisation or dropout, loss -Dice (smooth 1), Adam 1e-5, batch 32, 20 epochs.
    "tutorial": dict(image_size=[96, 96], width=32, depth=4, batchnorm=False, dropout=0.0,
                     loss="dice", lr=1e-5, batch_size=32, epochs=20, augment=False,
                     schedule="constant", tune=False, tta=False)
}
# Settings a resumed run may change: they do not change what the training computes.
RESUMABLE = {
    "resume", "quiet", "verbose", "time_limit", "fold", "raw", "workdir", "tensorboard", "summary",
    "gpus", "weights", "preset", "tune", "tta", "class_weights", "plan", "encoder_weights",
    "seconds"
}
EMA_MOMENTUM = 0.99  # --ema: an average over about the last 100 steps

# ---------------------------------------------------------------- hardware


def cpu_has_bf16():
    """Whether oneDNN may compute bf16 here: the CPU has the units, and ONEDNN_MAX_CPU_ISA (which
    holds oneDNN to an older instruction set, e.g. AVX2) does not forbid them."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa != "ALL" and not any(k in isa for k in ("BF16", "AMX", "AVX10")):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_precision(requested):
    """bf16 where the hardware computes it fast (AMX or avx512_bf16 CPUs, GPUs of compute
    capability 8+), float16 on older GPUs (7.x), float32 elsewhere."""
    if requested != "auto":
        return requested
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        major, _ = details.get("compute_capability", (0, 0))
        return "mixed_bfloat16" if major >= 8 else "mixed_float16" if major >= 7 else "float32"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def distribution(gpus):
    """MirroredStrategy over `gpus` devices (logical CPU devices where there is no GPU, so that
    the path runs in tests), or the default strategy."""
    if gpus <= 1:
        return tf.distribute.get_strategy()
    if not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu,
                                                   [tf.config.LogicalDeviceConfiguration()] * gpus)
    devices = (tf.config.list_logical_devices("GPU")[:gpus] or
               tf.config.list_logical_devices("CPU")[:gpus])
    if len(devices) < gpus:
        raise UserError(f"--gpus {gpus} asked for, {len(devices)} found: lower --gpus")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


# ---------------------------------------------------------------- one fold


def resume_options(s, data):
    """What a resumed run must share with the interrupted one: every setting that changes what
    the training computes, and the data it trains on."""
    options = {f"--{k.replace('_', '-')}": v for k, v in vars(s).items() if k not in RESUMABLE}
    return {**options, "--precision": keras.mixed_precision.global_policy().name, **data}


def encoder_unet(s, size, initial):
    """--encoder: a U-Net on that backbone, with `initial` its weights from --encoder-weights
    (FILE, imagenet, or none: random). It normalises the pixels its backbone's way, not by
    their statistics."""
    weights = s.encoder_weights if initial else None
    try:
        return encoders.build(s.encoder, size, s.channels, model.outputs_for(s.classes), weights,
                              s.width, model.presence_head if s.gate else None)
    except encoders.EncoderWeightsError as e:
        raise UserError(f"--encoder-weights {e}") from None
    except Exception as e:  # keras.applications' failed download raises a bare Exception
        if weights != "imagenet" or type(e) is not Exception:
            raise
        raise UserError(f"--encoder-weights imagenet: the download failed ({str(e)[:160]}): give "
                        f"the file {encoders.ENCODERS[s.encoder].weights_file} instead "
                        f"(--encoder-weights FILE; in a Kaggle notebook, a dataset added as "
                        f"input)") from None


def compile_model(s, net):
    loss = model.loss_for(s.loss, s.classes, s.class_weights)
    # --ema: validation, the epoch kept and the saved model all use the averaged weights
    # (SwapEMAWeights in fold_callbacks, callbacks.averaged_weights, fit's own finalisation).
    adam = keras.optimizers.Adam(s.lr, use_ema=s.ema, ema_momentum=EMA_MOMENTUM)
    metric = [model.dice_metric(s.classes)]
    if s.gate:  # the loss is the sum of the two: the mask's, and cross-entropy on presence
        loss, metric = {model.MASK: loss, model.PRESENCE: model.bce_loss}, {model.MASK: metric}
    net.compile(adam, loss, metrics=metric)
    # Built here, the optimizer's variables exist before fit traces its step: created inside that
    # trace, they make TensorFlow trace the whole step twice (4 s a model on a 2-core CPU).
    net.optimizer.build(net.trainable_variables)


def compiled_model(s, mean, std, strategy, size=None, initial=True, frozen=False):
    """The recipe's network at `size` (default: s.input_size), compiled; with `initial`, the
    --weights (and --encoder-weights) loaded; frozen: its encoder frozen
    (--freeze-encoder-epochs)."""
    size = size or s.input_size
    with strategy.scope():
        if s.encoder != "none":
            net = encoder_unet(s, size, initial)
        else:
            net = model.build_unet(size, s.channels, model.outputs_for(s.classes), s.width, s.depth,
                                   s.dropout, s.batchnorm, mean, std, s.gate)
        if s.weights and initial:
            model.load_initial_weights(net, s.weights)
        if frozen:
            encoders.freeze(net)
        compile_model(s, net)
    return net


def first_guess(s, frames, deadline):
    """The epochs planned before any is timed, from the steps the budget timed (PlanEpochs plans
    again from the second epoch on)."""
    plan = s.plan or {}
    if not deadline or "step_seconds" not in plan:
        return 2
    steps = dataset.steps_per_epoch(frames, s.batch_size, s.augment)
    return budget.affordable(plan["step_seconds"], steps, deadline - time.time(),
                             plan["fixed_seconds"])


def fold_callbacks(s, fold, state, first, deadline, frames):
    model_dir = s.workdir / "model"
    history = model_dir / f"history_fold{fold}.csv"
    if first:
        callbacks.truncate_history(history, first)
    planned = state.state["logs"].get("planned_epochs") if first else None
    planner = callbacks.PlanEpochs(s.epochs, deadline, planned, first_guess(s, frames, deadline))
    stop = callbacks.StopOnDeadlineOrSignal(deadline)
    chain = [
        callbacks.MaskMetricNames(),  # first: the callbacks after it read val_dice
        planner,
        keras.callbacks.LearningRateScheduler(callbacks.lr_schedule(s.lr, s.schedule, planner)),
        keras.callbacks.CSVLogger(history, append=first > 0),
        callbacks.PlotCurves(history, model_dir / "curves.png"),
        state,  # after the logger: a kill between the two repeats an epoch, never skips one
        stop
    ]
    if s.tensorboard:
        chain.append(callbacks.tensorboard(model_dir / "tensorboard" / f"fold{fold}"))
    if s.ema:  # validation sees the averaged weights; the state kept for --resume, the raw ones
        chain.append(keras.callbacks.SwapEMAWeights())
    return chain, stop, planner


def restored(s, fold, net, state, strategy):
    """Epochs already done by an interrupted run of this fold (0 when starting afresh)."""
    if not (s.resume and state.saved()):
        if s.resume:
            log.info(f"fold {fold}: no interrupted run in {state.folder}, starting afresh")
        return 0
    with strategy.scope():  # where the optimizer's variables belong
        first = state.restore(net)
    log.info(f"fold {fold}: resuming after epoch {first}")
    return first


def fit(s, fold, net, data, chain, first, last):
    """Epochs first to last - 1 of a fold. data: (train, val) as for train_fold."""
    if first >= last:
        return
    (x, y, sizes), (val_x, val_y, val_sizes) = data
    train_ds, val_ds, steps = dataset.fold_datasets(s, fold, x, y, val_x, val_y, (sizes, val_sizes),
                                                    range(first, last))
    for callback in chain:  # a fit after the warm-up goes on with the same log
        if isinstance(callback, keras.callbacks.CSVLogger):
            callback.append = first > 0
    verbose = 0 if s.quiet else 1 if sys.stdout.isatty() else 2
    net.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first,
            steps_per_epoch=steps, callbacks=[callbacks.MarkCompleteEpochs(steps),
                                              *chain], verbose=verbose)


def starts_frozen(s, state):
    """--freeze-encoder-epochs N: whether the model to start (or resume) has its encoder frozen.
    The state saved after any of the first N epochs holds the frozen model's optimizer."""
    saved = state.saved() if s.resume else None
    done = saved["epoch"] if saved else 0
    return 0 < s.freeze_encoder_epochs and done <= s.freeze_encoder_epochs


def epoch_cap(s):
    """The most epochs a fold trains: --epochs, else none (under a time limit the plan decides)."""
    return s.epochs or math.inf


def fit_planned(s, fold, net, data, chain, first, planner):
    """The epochs from `first` to --epochs, or without it to the end of the plan: a plan that
    grows past the epochs a fit was given goes on in another fit."""
    while True:
        last = s.epochs or planner.planned_epochs
        fit(s, fold, net, data, chain, first, last)
        if s.epochs or net.stop_training or first >= last:
            return
        first = last


def fit_fold(s, fold, net, data, chain, first, state, strategy, planner):
    """The epochs from `first` on; with --freeze-encoder-epochs N, those before N train the
    decoder alone, the rest the whole network with a fresh optimizer (Keras fixes the trainable
    variables when it compiles)."""
    most = epoch_cap(s)
    warm = min(s.freeze_encoder_epochs, most)
    if first < warm:
        fit(s, fold, net, data, chain, first, warm)
        if net.stop_training:  # time limit, signal, patience or the planned epochs reached
            return
    if 0 < warm < most and first <= warm:
        # The last epoch's own weights: fit ends by putting the --ema average in their place.
        state.load_weights(net, state.state["weights"])
        encoders.freeze(net, False)
        with strategy.scope():
            compile_model(s, net)
        log.info(f"fold {fold}: encoder unfrozen after epoch {warm}, with a fresh optimizer")
    fit_planned(s, fold, net, data, chain, max(first, warm), planner)


def train_fold(s, fold, train, val, mean, std, deadline, strategy):
    """Train (or, with --resume, go on training) one fold and save it as fold<i>.keras.
    train, val: (images, masks, own sizes) at the working size (or as they are, for patches)."""
    final = s.workdir / "model" / f"fold{fold}.keras"
    keras.utils.set_random_seed(s.seed + fold)  # each fold on its own: resumable alone
    data = {
        "training frames": len(train[0]),
        "validation frames": len(val[0]),
        "pixel mean": mean,
        "pixel std": std,
        "channels": s.channels,
        "classes": s.classes
    }
    state = callbacks.TrainingState(s.workdir / "model" / f"backup_fold{fold}",
                                    resume_options(s, data), s.patience, timed=bool(deadline))
    net = compiled_model(s, mean, std, strategy, frozen=starts_frozen(s, state))
    first = restored(s, fold, net, state, strategy)
    if state.state["done"] and final.exists():
        log.info(f"fold {fold}: trained by the interrupted run, {final}")
        return
    chain, stop, planner = fold_callbacks(s, fold, state, first, deadline, len(train[0]))
    if first < epoch_cap(s) and not state.state["stopped"] and not state.state["done"]:
        fit_fold(s, fold, net, (train, val), chain, first, state, strategy, planner)
    gc.freeze()  # fit's leftovers: see train.py's train_folds
    if stop.signalled:
        log.warning(f"{stop.signalled}: fold {fold} stopped; its {state.state['epoch']} complete "
                    f"epochs are saved in {state.folder}: run the same command with --resume "
                    f"to continue")
        raise KeyboardInterrupt
    state.load_best(net)  # else no epoch completed (time limit): the model as it is
    with atomic_path(final) as tmp:
        net.save(tmp)
    state.save(done=True)


def seconds_per_step(s, size, images, masks, sizes, strategy, steps=3):
    """Seconds of this recipe's training step at `size` on these frames (augmentation and all),
    the fastest of `steps` steps after two that trace, compile and warm the caches up (a busy
    machine only ever slows a step down); and the seconds those two took beyond two steps:
    what each fold pays once."""
    n = min(len(images), s.batch_size * (steps + 2))
    crop = None if sizes is None else sizes[:n]
    x = resize_stack(images[:n], size, "area", crop=crop)
    y = dataset.resize_masks(masks[:n], size, s.classes, crop)
    net = compiled_model(s, float(x.mean()), float(x.std()) or 1.0, strategy, size, initial=False)
    data = dataset.dataset(x, y, s.batch_size, s.seed, range(steps + 2), s.classes, shuffle=True,
                           augment=s.augment, presence=s.gate)
    ends = [time.time()]
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append((float(logs["loss"]), time.time())[1]))
    net.fit(data.repeat(), epochs=1, steps_per_epoch=steps + 2, verbose=0, callbacks=[clock])
    step = float(np.min(np.diff(ends[2:])))
    return step, max(0.0, ends[2] - ends[0] - 2 * step)


# ---------------------------------------------------------------- out of fold


def out_of_fold(s, fold, images, sizes, mixed):
    """(probabilities, presence) (see inference.forward) of a fold's validation images by its
    saved file, loaded outside any distribution strategy exactly as predict.py will load it."""
    saved = keras.models.load_model(s.workdir / "model" / f"fold{fold}.keras", compile=False)
    if not s.patch:
        return inference.probabilities([saved], images, s.batch_size * 4, s.tta, s.quiet,
                                       sizes=sizes if mixed else None)
    channels = model.mask_shape(saved)[-1]
    out = np.zeros((*images.shape[:3], *([channels] if channels > 1 else [])), np.float32)
    for i, (h, w) in enumerate(sizes):  # on the canvas, as the images lie
        out[i, :h, :w] = inference.tiled_probabilities([saved], images[i, :h, :w], s.patch,
                                                       s.patch // 4, s.batch_size, s.tta)
    return out, None


def evaluate(s, probs, truth, working_truth, pixel_area, place, presence=None):
    """Scores of out-of-fold probabilities: untuned (threshold 0.5, no minimum area, no presence
    gate) and with the post-processing tuned on these same predictions (optimistic).
    Returns (post-processing: final_masks' threshold, min_area and presence_threshold, tuning
    grid, final masks, tuned scores, untuned score)."""

    def scores_at(post):
        pred = inference.final_masks(probs, truth.shape[1:3], **post, sizes=place,
                                     presence=presence)
        return pred, metrics.class_scores(pred, truth, s.classes)

    post, grid = dict(threshold=0.5, min_area=0, presence_threshold=0.0), []
    _, untuned = scores_at(post)
    if s.tune and s.classes == 1:
        post = inference.tune_postprocessing(probs, working_truth, pixel_area, grid, presence)
    pred, tuned = scores_at(post)
    return post, grid, pred, tuned, metrics.overall(untuned)


def save_records(model_dir, frames, grid, folds):
    """What the report and visualize.py show: each validation frame's Dice (frames: a table),
    the tuning grid, and the curves of every fold of this run."""
    import pandas as pd

    tuning = pd.DataFrame(grid, columns=["threshold", "min_area", "presence_threshold", "dice"])
    for name, table in (("validation.csv", pd.DataFrame(frames)), ("tuning.csv", tuning)):
        with atomic_path(model_dir / name) as tmp:
            table.to_csv(tmp, index=False)
    figures.plot_curves([model_dir / f"history_fold{f}.csv" for f in folds],
                        model_dir / "curves.png")
