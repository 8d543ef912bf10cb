"""Callbacks of a training run: the whole training state after every epoch (for --resume),
the time budget, the learning-rate schedule fitted into it, and the curves drawn as it goes.

Interrupted training, and train.py --resume:

While fold i trains, model/backup_fold<i>/ holds state.json (epochs done, the best score so far,
the last epoch's logs, the random generators' states, the run's recipe, plan and a fingerprint
of its training data) and the weights it names: the model's and optimizer's after the last
epoch, and the best epoch's model; beside them the fold's history_fold<i>.csv and curves.png,
and once the fold is trained its fold<i>.keras. They move into model/ when the whole run
commits its model folder (kit/evaluation.py), which removes the backups. Each file is renamed
into place and state.json last, so a run killed at any moment leaves the last completed epoch
intact. An epoch cut short (time limit, Ctrl-C) is never saved: resuming
starts it again. The data order and augmentation depend only on (seed, epoch, step) (see
kit/dataset.py), so a resumed run ends as an uninterrupted one with the same seed would.
"""

import contextlib
import dataclasses
import json
import logging
import math
import re
import signal
import time
from pathlib import Path

import numpy as np

from kit import figures
from kit.cli import import_tensorflow
from kit.files import UserError, atomic_path, check_free_space, dead_temporary, disk_errors
from kit.recipe import Recipe, flag

import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import keras  # noqa: E402

log = logging.getLogger(__name__)

STATE = "state.json"
WEIGHTS = re.compile(r"(epoch|best)\d+\.weights\.h5")  # the files TrainingState writes


def rng_variables(model):
    """The states of the model's random generators (dropout): not in Keras' weight files."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


class TrainingState(keras.callbacks.Callback):
    """Saves the training state after every complete epoch, keeps the best epoch's weights, and
    stops when `monitor` has not risen for `patience` epochs: the jobs of BackupAndRestore,
    ModelCheckpoint and EarlyStopping, done so that all of their state survives an interruption.
    run: what a resumed run must share with this one, {"recipe": the Recipe as a dict, "data":
    the training data's fingerprint, "plan": the Plan as a dict}."""

    def __init__(self, folder, run, patience, monitor="val_dice", timed=False):
        super().__init__()
        self.folder, self.run = Path(folder), json.loads(json.dumps(run, default=str))
        self.patience, self.monitor, self.timed = patience, monitor, timed
        self.state = {
            "epoch": 0,
            "best": -math.inf,
            "best_epoch": -1,
            "weights": None,
            "best_weights": None,
            "stopped": False,
            "done": False,
            "logs": {},
            **self.run
        }

    # ------------------------------------------------------------ on disk

    def saved(self):
        """The saved state, or None."""
        return read_state(self.folder)

    def check_run(self, state):
        check_same_run(state, self.run, self.folder)

    def restore(self, model):
        """Load the saved state into the compiled `model`; returns the number of completed
        epochs."""
        state = self.saved()
        self.check_run(state)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        if state["weights"]:
            self.load_weights(model, state["weights"])
        for variable, value in zip(rng_variables(model), state.get("rng", [])):
            variable.assign(np.asarray(value, variable.dtype))
        self.state = state
        return state["epoch"]

    def load_weights(self, model, name):
        try:
            model.load_weights(self.folder / name)
        except (ValueError, OSError) as e:
            raise UserError(
                f"{self.folder / name} cannot be loaded ({str(e).splitlines()[0][:100]}): "
                f"delete {self.folder} to start this fold afresh") from None

    def load_best(self, model):
        """The best complete epoch's weights into `model`; False when no epoch completed."""
        if not self.state["best_weights"]:
            return False
        self.load_weights(model, self.state["best_weights"])
        return True

    def save(self, **changes):
        self.state.update(changes)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / STATE) as tmp:  # the commit point
            tmp.write_text(json.dumps(self.state, indent=1))
        keep = {self.state["weights"], self.state["best_weights"]}
        # Older epochs' weights, and what a killed run was writing; the rest of the folder (the
        # fold's history, curves and model) is not the state's to delete.
        for old in self.folder.iterdir():
            if (WEIGHTS.fullmatch(old.name) and old.name not in keep) or dead_temporary(old):
                old.unlink()

    def save_weights(self, name):
        save_model(self.model.save_weights, self.model, self.folder / name)
        return name

    # ------------------------------------------------------------ callback

    def on_epoch_end(self, epoch, logs=None):
        if not (logs or {}).get("complete", 1):
            return  # cut short (MarkCompleteEpochs): not comparable, not a state to resume from
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        best, best_epoch, best_weights = (self.state["best"], self.state["best_epoch"],
                                          self.state["best_weights"])
        score = logs.get(self.monitor, -math.inf)
        if score > best:
            best, best_epoch = score, epoch
            with averaged_weights(self.model):  # --ema: the weights that were validated
                best_weights = self.save_weights(f"best{epoch + 1}.weights.h5")
        # With a time limit, never before half the planned epochs (PlanEpochs): on small sets
        # the validation Dice can sit at 0 for longer than the patience, then take off.
        earliest = logs.get("planned_epochs", 0) // 2 if self.timed else 0
        stopped = (self.patience is not None and epoch - best_epoch >= self.patience
                   and epoch + 1 >= earliest)
        self.model.stop_training |= stopped
        weights = self.save_weights(f"epoch{epoch + 1}.weights.h5")
        self.save(epoch=epoch + 1, best=best, best_epoch=best_epoch, best_weights=best_weights,
                  weights=weights, stopped=stopped, logs=logs,
                  rng=[np.asarray(v).tolist() for v in rng_variables(self.model)])


def save_model(save, model, path):
    """save(temporary path) of a model's weights or whole model: refused where the disk has no
    room for it, and a full disk while saving said as one (h5py's words are its own)."""
    variables = [*model.weights, *(model.optimizer.variables if model.optimizer else [])]
    size = sum(4 * math.prod(v.shape) for v in variables)  # float32, or less
    check_free_space(path.parent, size, f"{path.name} and the files beside it",
                     "free some disk space, then run the same command with --resume")
    with atomic_path(path) as tmp, disk_errors(path):
        save(tmp)


def read_state(folder):
    """The state saved in `folder` (a fold's backup), or None."""
    path = Path(folder) / STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or "recipe" not in state or "data" not in state:
            raise ValueError("made by an older kit, or damaged")
        return state
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is unreadable ({e}): delete {folder} to start this fold "
                        f"afresh") from None


def interrupted(model_dir):
    """The backup folder of an interrupted run's first fold in model_dir, or None."""
    return next((f for f in sorted(Path(model_dir).glob("backup_fold*")) if (f / STATE).exists()),
                None)


def check_same_run(state, run, folder):
    """A resumed run must train the same recipe on the same data as the interrupted one: the
    first difference, in the user's words."""
    afresh = f"or delete {folder} to start afresh"
    run = json.loads(json.dumps(run, default=str))  # as saved: tuples are lists
    old, new = state["data"], run["data"]
    if old != new:
        what = (f"{new['frames']} frames, was {old['frames']}" if old["frames"] != new["frames"]
                else f"{new['frames']} frames of other contents")
        raise UserError(f"cannot resume: the training arrays changed since the interrupted run "
                        f"({what}): run `python data.py` as before, {afresh}")
    # A setting added to the kit since that run had its default there.
    defaults = json.loads(json.dumps(dataclasses.asdict(Recipe())))
    for key, value in run["recipe"].items():
        if (was := state["recipe"].get(key, defaults.get(key))) != value:
            raise UserError(f"cannot resume: {flag(key)} was {was} in the interrupted run, now "
                            f"{value}: use the interrupted run's options, {afresh}")


@contextlib.contextmanager
def averaged_weights(model):
    """With train.py --ema (an optimizer with use_ema), the moving average of the weights in the
    model for a while, swapped in and out as Keras' SwapEMAWeights does around validation."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # loss scaling
    if not getattr(optimizer, "use_ema", False):
        yield
        return
    swap = keras.callbacks.SwapEMAWeights()
    swap.set_model(model)
    swap.on_test_begin()
    try:
        yield
    finally:
        swap.on_test_end()


def truncate_history(path, epochs):
    """Keep the header and the first `epochs` rows of a CSVLogger file: later rows belong to
    epochs that were cut short or never saved, and will be trained again."""
    if not path.exists():
        return
    lines = path.read_bytes().splitlines(keepends=True)[:1 +
                                                        epochs]  # bytes: keep the csv module's \r\n
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"".join(lines))


class StopOnDeadlineOrSignal(keras.callbacks.Callback):
    """Stops after the current step when the time budget is spent or on SIGINT/SIGTERM."""

    def __init__(self, deadline):
        super().__init__()
        self.deadline, self.signalled = deadline, None

    def on_train_begin(self, logs=None):
        self.previous = {
            sig: signal.signal(sig, self.request)
            for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def on_train_end(self, logs=None):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def request(self, signum, frame):
        log.warning(
            f"{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to abort)")
        self.signalled = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_batch_end(self, batch, logs=None):
        if self.signalled or (self.deadline and time.time() > self.deadline):
            self.model.stop_training = True


class PlanEpochs(keras.callbacks.Callback):
    """Fits the schedule into the time limit: after every epoch from the second on (the first
    also compiles), plans how many epochs fit before the deadline at the mean pace of those
    epochs, and stops when the plan is done. An epoch's pace runs from its start to the next
    one's, so the other callbacks' work between epochs (saving, plotting) counts. Logs the plan
    and each epoch's seconds (TrainingState reads the plan): put it before TrainingState.
    most_epochs: None for no cap; guess: the plan before any epoch is timed (at least 2: the
    second epoch's end makes the first plan from a pace)."""

    def __init__(self, most_epochs, deadline, planned=None, guess=2):
        super().__init__()
        self.most, self.deadline = most_epochs or math.inf, deadline
        self.planned_epochs = int(planned or most_epochs or max(2, guess))
        self.fixed = planned is not None or not deadline  # a resumed run keeps its plan
        self.began, self.cycles = None, []

    def on_epoch_begin(self, epoch, logs=None):
        now = time.time()
        if self.began is not None:
            self.cycles.append(now - self.began)
        self.began = now

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self.began
        paces = self.cycles[1:] + [seconds]  # the epochs after the first, this one included
        if not self.fixed and self.cycles:
            # Re-planned every epoch: one slow epoch on a busy machine must not end the run
            # early, and the cosine schedule bends only a little as the estimate firms up.
            left = max(0.0, self.deadline - time.time())
            fits = epoch + 1 + int(left / np.mean(paces))
            self.planned_epochs = max(epoch + 1, min(self.most, fits))
            log.debug(f"planned {self.planned_epochs} epochs")
        if logs is not None:
            logs["planned_epochs"] = self.planned_epochs
            logs["seconds"] = round(seconds, 3)
        if epoch + 1 >= self.planned_epochs:
            self.model.stop_training = True


class MarkCompleteEpochs(keras.callbacks.Callback):
    """Logs complete=1 for an epoch that ran all its steps, 0 for one cut short (time limit,
    Ctrl-C): such an epoch is logged, but never kept or resumed from. Put it first."""

    def __init__(self, steps_per_epoch):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["complete"] = float(self.steps >= self.steps_per_epoch)


class MaskMetricNames(keras.callbacks.Callback):
    """A model with a presence head (train.py --gate) has two outputs, and Keras then names the
    mask's metric after its output: mask_dice, val_mask_dice. They go back to dice and val_dice,
    the names that the best epoch, the history, the curves and the report read. Put it first."""

    NAMES = {"mask_dice": "dice", "val_mask_dice": "val_dice"}

    def on_epoch_end(self, epoch, logs=None):
        for old, new in self.NAMES.items():
            if logs is not None and old in logs:
                logs[new] = logs.pop(old)


class PlotCurves(keras.callbacks.Callback):
    """Redraws the curves PNG from the history CSV after an epoch, at most every `every`
    seconds (a plot can take longer than a small set's epoch), and when training ends (put it
    after the CSVLogger)."""

    def __init__(self, history, png, every=20.0):
        super().__init__()
        self.history, self.png, self.every, self.drawn = history, png, every, -math.inf

    def on_epoch_end(self, epoch, logs=None):
        if time.time() - self.drawn >= self.every:
            self.on_train_end()

    def on_train_end(self, logs=None):
        if self.history.exists():
            figures.plot_curves([self.history], self.png)
            self.drawn = time.time()


def tensorboard(log_dir):
    try:
        import tensorboard  # noqa: F401  (Keras needs it, and fails only at the first epoch's end)
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: `pip install tensorboard`") from None
    return keras.callbacks.TensorBoard(log_dir)


FLOOR = 0.02  # cosine and restarts decay to 2% of the peak rate
# One-cycle (Smith 2018, "A disciplined approach to neural network hyper-parameters"; Smith and
# Topin 2019, "Super-convergence"), with the constants of PyTorch's OneCycleLR and fastai: a
# linear rise from lr/25 over the first 30% of the planned epochs to the peak, then a cosine
# down to lr/1e4 at the last planned epoch.
ONECYCLE_START, ONECYCLE_RISE, ONECYCLE_END = 1 / 25, 0.3, 1e-4


def cosine_to(floor, progress):
    """From 1 at progress 0 down a half cosine to `floor` at progress 1 (and after)."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def cosine(epoch, planned, warmup):
    return cosine_to(FLOOR, (epoch - warmup) / max(1, planned - warmup))


def restart_cycles(epochs):
    """SGDR's cycle lengths for `epochs` epochs after the warm-up: up to 3 cycles, each twice
    the one before, the first at least 3 epochs; the last takes the epochs left over."""
    n = max(1, min(3, int(math.log2(epochs / 3 + 1))))
    first = max(1, epochs // (2**n - 1))
    cycles = [first * 2**i for i in range(n - 1)]
    return cycles + [max(1, epochs - sum(cycles))]


def restarts(epoch, planned, warmup):
    """Cosine with warm restarts (SGDR, Loshchilov and Hutter 2017): each cycle falls from the
    peak to FLOOR at its last epoch, and the next starts again at the peak."""
    t = epoch - warmup
    for length in restart_cycles(max(1, planned - warmup)):
        if t < length:
            return cosine_to(FLOOR, t / max(1, length - 1))
        t -= length
    return FLOOR  # past the plan


def onecycle(epoch, planned, _):
    peak = round(ONECYCLE_RISE * (planned - 1))
    if epoch < peak:
        return ONECYCLE_START + (1 - ONECYCLE_START) * epoch / peak
    return cosine_to(ONECYCLE_END, (epoch - peak) / max(1, planned - 1 - peak))


# Each schedule: the fraction of the peak rate at an epoch, given the planned epochs and the
# warm-up. The names are recipe.SCHEDULES.
SCHEDULES = {
    "cosine": cosine,
    "constant": lambda epoch, planned, warmup: 1.0,
    "restarts": restarts,
    "onecycle": onecycle,
}
WARMED_UP = ("cosine", "restarts")  # onecycle has its own rise


def lr_schedule(lr, kind, planner, warmup=2):
    """The learning rate at each epoch over the planner's planned epochs (re-read every epoch):
    constant; cosine: a linear warm-up over `warmup` epochs, then a cosine decay to 2% of lr;
    restarts: the same warm-up, then cosine cycles each twice as long as the one before, each
    restarting at lr; onecycle: lr/25 rising to lr at 30% of the plan, then down to lr/1e4."""
    fraction = SCHEDULES[kind]

    def schedule(epoch, _):
        if kind in WARMED_UP and epoch < warmup:
            return lr * (epoch + 1) / warmup
        return lr * fraction(epoch, planner.planned_epochs, warmup)

    return schedule
