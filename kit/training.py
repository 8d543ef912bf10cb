"""Training: the hardware's precision and devices, the recipe's network compiled, one fold
trained (or resumed) in its phases and saved, and the folds of a run in turn."""

import dataclasses
import gc
import logging
import math
import os
import sys
import time

import numpy as np

from kit import budget, callbacks, dataset, encoders, evaluation, model
from kit.cli import import_tensorflow
from kit.files import UserError
from kit.images import resize_stack
from kit.recipe import ENCODERS, Options, Plan, Recipe

tf = import_tensorflow()
import keras  # noqa: E402

log = logging.getLogger(__name__)
EMA_MOMENTUM = 0.99  # --ema: an average over about the last 100 steps


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: what was asked (kit/recipe.py's Recipe and Options), what it planned
    (Plan), the training data's fingerprint, and the devices it trains on."""

    recipe: Recipe
    options: Options
    plan: Plan
    data: dict  # dataset.Frames.fingerprint()
    strategy: object  # a tf.distribute strategy

    @property
    def model_dir(self):
        return self.options.workdir / "model"

    def backup(self, fold):
        """Where a fold lives until the run commits its model folder: its state for --resume,
        history and curves, and once trained its model (see kit/callbacks.py)."""
        return self.model_dir / f"backup_fold{fold}"

    def fold_model(self, fold):
        return self.backup(fold) / f"fold{fold}.keras"

    def history(self, fold):
        return self.backup(fold) / f"history_fold{fold}.csv"

    def identity(self):
        """What a resumed run must share with this one (callbacks.check_same_run)."""
        return {"recipe": dataclasses.asdict(self.recipe), "data": self.data,
                "plan": self.plan.to_dict()}


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


def start(seed, precision, gpus):
    """Seed every generator, set the precision policy, and return the distribution strategy."""
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(precision)
    return distribution(gpus)


def interrupted_plan(recipe, options, data):
    """The Plan of the interrupted run --resume continues, once its recipe and training data
    (data: their fingerprint) are found to be this run's; None for a run afresh, which is
    refused over an interrupted one (it would be lost)."""
    folder = callbacks.interrupted(options.workdir / "model")
    if folder is None or options.summary:
        return None
    if not options.resume:
        raise UserError(f"{folder} holds an interrupted run: pass --resume to continue it, or "
                        f"delete that folder to start afresh")
    state = callbacks.read_state(folder)
    callbacks.check_same_run(state, {"recipe": dataclasses.asdict(recipe), "data": data}, folder)
    return Plan.from_dict(state["plan"])


# ---------------------------------------------------------------- the network


def network(run, size, mean, std, initial):
    """The recipe's network (kit/model.py) at `size`; with `initial`, the backbone's
    --encoder-weights (FILE, imagenet, or none: random). A backbone normalises the pixels its
    own way, not by their statistics."""
    r, p = run.recipe, run.plan
    weights = run.options.encoder_weights if initial else None
    try:
        return model.build(r, size, p.channels, p.classes, mean, std, weights)
    except encoders.EncoderWeightsError as e:
        raise UserError(f"--encoder-weights {e}") from None
    except Exception as e:  # keras.applications' failed download raises a bare Exception
        if weights != "imagenet" or type(e) is not Exception:
            raise
        raise UserError(f"--encoder-weights imagenet: the download failed ({str(e)[:160]}): give "
                        f"the file {ENCODERS[r.encoder]} instead "
                        f"(--encoder-weights FILE; in a Kaggle notebook, a dataset added as "
                        f"input)") from None


def compile_model(run, net):
    r, p = run.recipe, run.plan
    loss = model.loss_for(p.loss, p.classes, p.class_weights)
    # --ema: validation, the epoch kept and the saved model all use the averaged weights
    # (SwapEMAWeights in fold_callbacks, callbacks.averaged_weights, fit's own finalisation).
    adam = keras.optimizers.Adam(r.lr, use_ema=r.ema, ema_momentum=EMA_MOMENTUM)
    metric = [model.dice_metric(p.classes)]
    if r.gate:  # the loss is the sum of the two: the mask's, and cross-entropy on presence
        loss, metric = {model.MASK: loss, model.PRESENCE: model.bce_loss}, {model.MASK: metric}
    net.compile(adam, loss, metrics=metric)
    # Built here, the optimizer's variables exist before fit traces its step: created inside that
    # trace, they make TensorFlow trace the whole step twice (4 s a model on a 2-core CPU).
    net.optimizer.build(net.trainable_variables)


def compiled_model(run, mean, std, size=None, initial=True, frozen=False):
    """The run's network at `size` (default: the plan's), compiled; with `initial`, the
    --weights (and --encoder-weights) loaded; frozen: its encoder frozen
    (--freeze-encoder-epochs)."""
    with run.strategy.scope():
        net = network(run, size or run.plan.size, mean, std, initial)
        if run.options.weights and initial:
            model.load_initial_weights(net, run.options.weights)
        if frozen:
            encoders.freeze(net)
        compile_model(run, net)
    return net


def seconds_per_step(run, size, frames, steps=3):
    """Seconds of the recipe's training step at `size` on these frames (augmentation and all),
    the fastest of `steps` steps after two that trace, compile and warm the caches up (a busy
    machine only ever slows a step down); and the seconds those two took beyond two steps:
    what each fold pays once."""
    r = run.recipe
    n = min(len(frames.images), r.batch_size * (steps + 2))
    crop = frames.sizes[:n] if frames.mixed else None
    x = resize_stack(frames.images[:n], size, "area", crop=crop)
    y = dataset.resize_masks(frames.masks[:n], size, frames.classes, crop)
    net = compiled_model(run, float(x.mean()), float(x.std()) or 1.0, size, initial=False)
    data = dataset.dataset(x, y, r.batch_size, r.seed, range(steps + 2), frames.classes,
                           shuffle=True, augment=r.augment, presence=r.gate)
    ends = [time.time()]
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append((float(logs["loss"]), time.time())[1]))
    net.fit(data.repeat(), epochs=1, steps_per_epoch=steps + 2, verbose=0, callbacks=[clock])
    step = float(np.min(np.diff(ends[2:])))
    return step, max(0.0, ends[2] - ends[0] - 2 * step)


def step_timer(recipe, options, data, strategy, frames):
    """timer(size, plan) for kit/budget.py: seconds_per_step of this recipe on these frames."""
    return lambda size, plan: seconds_per_step(Run(recipe, options, plan, data, strategy), size,
                                               frames)


def describe(run, frames):
    """The run in one line: the images, what the network sees, and how it computes."""
    (h, w), (oh, ow), p = run.plan.size, frames.median_size(), run.plan
    mixed = " (median: mixed sizes)" if frames.mixed else ""
    return (f"{len(frames.images)} images {ow}x{oh}{mixed} -> "
            f"{'patches' if run.recipe.patch else 'working size'} {w}x{h}, {p.channels} "
            f"channel(s), {p.classes} class(es), {p.precision}, loss {p.loss}, "
            f"{run.strategy.num_replicas_in_sync} replica(s)")


def print_summary(run):
    r, (h, w) = run.recipe, run.plan.size
    net = network(run, run.plan.size, 0.0, 1.0, initial=False)  # no weights file needed
    net.summary()
    if r.encoder != "none":
        field = f"encoder {r.encoder}, stride {r.stride()}"
    else:
        field = model.receptive_field(r.depth)
        field = f"receptive field {field}x{field} pixels of the input"
    print(f"input {w}x{h}: {net.count_params():,} parameters, {field}")


# ---------------------------------------------------------------- one fold


def fold_callbacks(run, fold, state, first, deadline, frames):
    history = run.history(fold)
    if first:
        callbacks.truncate_history(history, first)
    planned = state.state["logs"].get("planned_epochs") if first else None
    steps = dataset.steps_per_epoch(frames, run.recipe.batch_size, run.recipe.augment)
    planner = callbacks.PlanEpochs(run.plan.epochs, deadline, planned,
                                   budget.first_guess(run.plan, steps, deadline))
    stop = callbacks.StopOnDeadlineOrSignal(deadline)
    chain = [
        callbacks.MaskMetricNames(),  # first: the callbacks after it read val_dice
        planner,
        keras.callbacks.LearningRateScheduler(
            callbacks.lr_schedule(run.recipe.lr, run.recipe.schedule, planner)),
        keras.callbacks.CSVLogger(history, append=first > 0),
        callbacks.PlotCurves(history, run.backup(fold) / "curves.png"),
        state,  # after the logger: a kill between the two repeats an epoch, never skips one
        stop
    ]
    if run.options.tensorboard:
        chain.append(callbacks.tensorboard(run.model_dir / "tensorboard" / f"fold{fold}"))
    if run.recipe.ema:  # validation sees the averaged weights; the state kept for --resume, raw
        chain.append(keras.callbacks.SwapEMAWeights())
    return chain, stop, planner


def restored(run, fold, net, state):
    """Epochs already done by an interrupted run of this fold (0 when starting afresh)."""
    if not (run.options.resume and state.saved()):
        if run.options.resume:
            log.info(f"fold {fold}: no interrupted run in {state.folder}, starting afresh")
        return 0
    with run.strategy.scope():  # where the optimizer's variables belong
        first = state.restore(net)
    log.info(f"fold {fold}: resuming after epoch {first}")
    return first


def starts_frozen(run, state):
    """--freeze-encoder-epochs N: whether the model to start (or resume) has its encoder frozen.
    The state saved after any of the first N epochs holds the frozen model's optimizer."""
    saved = state.saved() if run.options.resume else None
    done = saved["epoch"] if saved else 0
    return 0 < run.recipe.freeze_encoder_epochs and done <= run.recipe.freeze_encoder_epochs


def fit(run, fold, net, data, chain, first, last):
    """Epochs first to last - 1 of a fold. data: (train, val) as for train_fold."""
    train_ds, val_ds, steps = dataset.fold_datasets(run.recipe, run.plan, fold, *data,
                                                    range(first, last))
    for callback in chain:  # a fit after the first goes on with the same log
        if isinstance(callback, keras.callbacks.CSVLogger):
            callback.append = first > 0
    verbose = 0 if run.options.quiet else 1 if sys.stdout.isatty() else 2
    net.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first,
            steps_per_epoch=steps, callbacks=[callbacks.MarkCompleteEpochs(steps),
                                              *chain], verbose=verbose)


def unfreeze(run, fold, net, state):
    """The whole network trains from here, with a fresh optimizer (Keras fixes the trainable
    variables when it compiles)."""
    # The last epoch's own weights: fit ends by putting the --ema average in their place.
    state.load_weights(net, state.state["weights"])
    encoders.freeze(net, False)
    with run.strategy.scope():
        compile_model(run, net)
    log.info(f"fold {fold}: encoder unfrozen after epoch {state.state['epoch']}, with a fresh "
             f"optimizer")


def train_phases(run, fold, net, data, chain, first, state, planner, frozen):
    """The fold's epochs from `first` on, phase by phase: with a frozen encoder
    (--freeze-encoder-epochs N) the decoder alone until epoch N; then the whole network until
    the plan's epochs, or without a cap until PlanEpochs' plan, which grows as the epochs are
    timed (each growth one more fit). Ends early on a stop (deadline, signal, patience)."""
    warm, cap = run.plan.frozen_epochs(run.recipe), run.plan.epochs or math.inf
    epoch = first
    while True:
        if frozen and warm <= epoch < cap:
            unfreeze(run, fold, net, state)
            frozen = False
        last = warm if frozen else min(cap, planner.planned_epochs)
        if epoch >= last:
            return
        fit(run, fold, net, data, chain, epoch, last)
        if net.stop_training:
            return
        epoch = last


def train_fold(run, fold, train, val, mean, std, deadline):
    """Train (or, with --resume, go on training) one fold and save it as fold<i>.keras in its
    backup folder (run.fold_model). train, val: (images, masks, own sizes) at the working size
    (or as they are, for patches)."""
    final = run.fold_model(fold)
    keras.utils.set_random_seed(run.recipe.seed + fold)  # each fold on its own: resumable alone
    state = callbacks.TrainingState(run.backup(fold), run.identity(), run.plan.patience,
                                    timed=bool(deadline))
    frozen = starts_frozen(run, state)
    net = compiled_model(run, mean, std, frozen=frozen)
    first = restored(run, fold, net, state)
    if state.state["done"] and final.exists():
        log.info(f"fold {fold}: trained by the interrupted run, {final}")
        return
    state.folder.mkdir(parents=True, exist_ok=True)  # the history is written there from the start
    chain, stop, planner = fold_callbacks(run, fold, state, first, deadline, len(train[0]))
    if not (state.state["stopped"] or state.state["done"]):
        train_phases(run, fold, net, (train, val), chain, first, state, planner, frozen)
    gc.freeze()  # fit's leftovers: see train_folds
    if stop.signalled:
        log.warning(f"{stop.signalled}: fold {fold} stopped; its {state.state['epoch']} complete "
                    f"epochs are saved in {state.folder}: run the same command with --resume "
                    f"to continue")
        raise KeyboardInterrupt
    state.load_best(net)  # else no epoch completed (time limit): the model as it is
    callbacks.save_model(net.save, net, final)
    state.save(done=True)


# ---------------------------------------------------------------- the folds of a run


def train_folds(run, frames, working, started):
    """Train each of the plan's folds, the folds sharing the time budget evenly, and predict
    each one's validation frames by its saved model: evaluation.OutOfFold."""
    r, p = run.recipe, run.plan
    fold_of = dataset.subject_folds(frames.subjects, r.folds, r.seed)
    if p.train_until:
        log.info(f"training until {p.train_until:.0f} s of the {run.options.time_limit:.0f} s; "
                 f"{run.options.time_limit - p.train_until:.0f} s kept for out-of-fold "
                 f"predictions and records")
    oof, begin = evaluation.OutOfFold(fold_of), time.time()
    for n, fold in enumerate(p.folds):
        train, val = fold_of != fold, fold_of == fold
        log.info(f"fold {fold}: {train.sum()} training, {val.sum()} validation frames "
                 f"(subjects {sorted(set(frames.subjects[val].tolist()))})")
        clock = time.time()
        train_fold(run, fold, (working.x[train], working.y[train], frames.sizes[train]),
                   (working.x[val], working.y[val], frames.sizes[val]), working.mean,
                   working.std, budget.fold_deadline(p, started, begin, n))
        # A fold's leftovers (its model, fit's objects) are never collected: a garbage collection
        # of them (2,594 objects) once stalled the next fold for 31 s; in 600-s runs, 15-45 s.
        gc.freeze()
        oof.seconds.append(round(time.time() - clock, 1))
        oof.add(val, *evaluation.out_of_fold(run, fold, frames.images[val], frames.sizes[val],
                                              frames.mixed))
        gc.freeze()  # and those of the model loaded for the out-of-fold predictions
    return oof
