"""Interrupted training: the whole training state after every epoch, and train.py --resume.

While fold i trains, model/backup_fold<i>/ holds state.json (epochs done, the best score so far,
the last epoch's logs, the random generators' states, the options that must not change) and the
weights it names: the model's and optimizer's after the last epoch, and the best epoch's model.
Each file is renamed into place and state.json last, so a run killed at any moment leaves the
last completed epoch intact. An epoch cut short (time limit, Ctrl-C) is never saved: resuming
starts it again. The data order and augmentation depend only on (seed, epoch, step) (see
train.dataset), so a resumed run ends as an uninterrupted one with the same seed would.
"""

import json
import math
from pathlib import Path

import keras
import numpy as np

import common
from common import UserError

STATE = "state.json"


def rng_variables(model):
    """The states of the model's random generators (dropout): not in Keras' weight files."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


class TrainingState(keras.callbacks.Callback):
    """Saves the training state after every complete epoch, keeps the best epoch's weights, and
    stops when `monitor` has not risen for `patience` epochs: the jobs of BackupAndRestore,
    ModelCheckpoint and EarlyStopping, done so that all of their state survives an interruption."""

    def __init__(self, folder, options, steps_per_epoch, patience, monitor="val_dice"):
        super().__init__()
        self.folder, self.options = Path(folder), json.loads(json.dumps(options))
        self.steps_per_epoch, self.patience, self.monitor = steps_per_epoch, patience, monitor
        self.state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "weights": None, "best_weights": None,
                      "stopped": False, "done": False, "logs": {}, "options": self.options}

    # ------------------------------------------------------------ on disk

    def saved(self):
        """The saved state, or None."""
        path = self.folder / STATE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (ValueError, OSError) as e:
            raise UserError(f"{path} is unreadable ({e}): delete {self.folder} to start this fold afresh") from None

    def describe(self, state):
        return f"{self.folder} holds an interrupted run ({state['epoch']} epochs done)"

    def check_options(self, state):
        for key, value in self.options.items():
            old = state["options"].get(key)
            if old == value:
                continue
            if key.startswith("--"):
                raise UserError(f"cannot resume: {key} was {old} in the interrupted run, now {value}: "
                                f"use the interrupted run's options, or delete {self.folder} to start afresh")
            raise UserError(f"cannot resume: the training data changed since the interrupted run ({key} "
                            f"{old}, now {value}): run `python data.py` as before, or delete "
                            f"{self.folder} to start afresh")

    def restore(self, model):
        """Load the saved state into the compiled `model`; returns the number of completed epochs."""
        state = self.saved()
        self.check_options(state)
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
            raise UserError(f"{self.folder / name} cannot be loaded ({str(e).splitlines()[0][:100]}): "
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
        with common.atomic_path(self.folder / STATE) as tmp:   # the commit point
            tmp.write_text(json.dumps(self.state, indent=1))
        keep = {STATE, self.state["weights"], self.state["best_weights"]}
        for old in self.folder.iterdir():   # older epochs, and what a killed run was writing
            if old.name not in keep:
                old.unlink()

    def save_weights(self, name):
        with common.atomic_path(self.folder / name) as tmp:
            self.model.save_weights(tmp)
        return name

    # ------------------------------------------------------------ callback

    def on_epoch_begin(self, epoch, logs=None):
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.steps < self.steps_per_epoch:
            return   # cut short: not comparable, and not a state to resume from
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        best, best_epoch, best_weights = self.state["best"], self.state["best_epoch"], self.state["best_weights"]
        score = logs.get(self.monitor, -math.inf)
        if score > best:
            best, best_epoch = score, epoch
            best_weights = self.save_weights(f"best{epoch + 1}.weights.h5")
        stopped = epoch - best_epoch >= self.patience
        self.model.stop_training |= stopped
        weights = self.save_weights(f"epoch{epoch + 1}.weights.h5")
        self.save(epoch=epoch + 1, best=best, best_epoch=best_epoch, best_weights=best_weights,
                  weights=weights, stopped=stopped, logs=logs,
                  rng=[np.asarray(v).tolist() for v in rng_variables(self.model)])


def truncate_history(path, epochs):
    """Keep the header and the first `epochs` rows of a CSVLogger file: later rows belong to
    epochs that were cut short or never saved, and will be trained again."""
    if not path.exists():
        return
    lines = path.read_bytes().splitlines(keepends=True)[:1 + epochs]   # bytes: keep the csv module's \r\n
    with common.atomic_path(path) as tmp:
        tmp.write_bytes(b"".join(lines))
