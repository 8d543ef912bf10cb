"""How training went: the curves, the records train.py keeps, the model summary, and the HTML report
(rendered in a real headless browser)."""

import base64
import importlib.util
import json
import re
import shutil
import subprocess
import types

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import run_script

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)
FOLD_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # matplotlib's C0, C1, C2 (RGB)


def colour_fraction(rgb, colour, tolerance=40):
    return float((np.abs(rgb.astype(int) - colour).sum(-1) < tolerance).mean())


def read_rgb(path_or_bytes):
    if isinstance(path_or_bytes, bytes):
        image = cv2.imdecode(np.frombuffer(path_or_bytes, np.uint8), cv2.IMREAD_COLOR)
    else:
        image = cv2.imread(str(path_or_bytes))
    assert image is not None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- train.py's records


def test_training_keeps_its_curves_and_what_the_threshold_was_picked_from(trained_demo):
    raw, work, _ = trained_demo
    model_dir = work / "model"
    config = json.loads((model_dir / "config.json").read_text())
    for fold in range(3):
        history = pd.read_csv(model_dir / f"history_fold{fold}.csv")
        assert len(history) == 2 and {"loss", "val_loss", "dice", "val_dice", "learning_rate"
                                      } <= set(history)
    curves = read_rgb(model_dir / "curves.png")
    for colour in FOLD_COLOURS:  # every fold of the run is drawn
        assert colour_fraction(curves, colour) > 0.001

    tuning = pd.read_csv(model_dir / "tuning.csv")
    assert set(tuning["threshold"].round(2)) == {round(t, 2) for t in np.arange(0.2, 0.91, 0.05)}
    # As tuning picks: the first best; its minimum area then moves to the middle of its gap
    best = tuning.iloc[int(tuning["dice"].to_numpy().argmax())]
    assert np.isclose(best["threshold"], config["threshold"])
    assert (config["min_area"] == 0) == (best["min_area"] == 0)


def test_curves_are_redrawn_as_epochs_pass_and_at_the_end(tmp_path):
    from kit import callbacks
    import keras

    history, png = tmp_path / "history.csv", tmp_path / "curves.png"
    seen = []

    class Look(keras.callbacks.Callback):

        def on_epoch_end(self, epoch, logs=None):
            seen.append(png.read_bytes())

    model = keras.Sequential([keras.Input((3, )), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(16, 3))

    def fit(every):
        seen.clear()
        model.fit(
            x, x[:, :1], epochs=3, verbose=0, callbacks=[
                keras.callbacks.CSVLogger(history),
                callbacks.PlotCurves(history, png, every),
                Look()
            ])

    fit(every=0)
    assert len(seen) == 3 and len(set(seen)) == 3  # after every epoch
    fit(every=3600)  # the first epoch, then only at the end: all three epochs drawn
    assert len(set(seen)) == 1 and png.read_bytes() not in seen
    assert read_rgb(seen[-1]).shape == (320, 1100, 3)


def test_tensorboard_logs_behind_a_flag(demo, tmp_path):
    raw, work = demo
    args = [
        "--raw", raw, "--workdir", tmp_path, "--image-size", 32, 48, "--width", 4, "--depth", 2,
        "--folds", 3, "--epochs", 1, "--batch-size", 8, "--no-tune", "--tensorboard", "-q"
    ]
    for name in ("imgs_train", "imgs_mask_train", "imgs_subject_train"):
        shutil.copy(work / f"{name}.npy", tmp_path)
    result = run_script("train.py", *args, check=False)
    if importlib.util.find_spec("tensorboard") is None:
        assert result.returncode == 2 and "pip install tensorboard" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert list((tmp_path / "model" / "tensorboard" / "fold0").rglob("events.out.tfevents.*"))


# ---------------------------------------------------------------- the model summary


def measured_receptive_field(depth):
    """The widest input window that reaches one output pixel, measured: with all-ones kernels and no
    biases every layer is monotone, so a lit input pixel reaches an output pixel iff it is in its
    field.
    Measured along the middle row, for output pixels of every position modulo 2^depth."""
    import keras
    from kit import model as unet

    h, w = 2**(depth + 1), 16 * 2**depth  # wider than the field; rows just enough
    net = unet.build_unet((h, w), width=2, depth=depth, dropout=0, batchnorm=False)
    for layer in net.layers:
        if hasattr(layer, "kernel"):
            layer.kernel.assign(np.ones(layer.kernel.shape))
            layer.bias.assign(np.zeros(layer.bias.shape))
    features = keras.Model(net.inputs, net.layers[-1].input)  # before the sigmoid saturates
    lit = np.zeros((w, h, w, 1), np.float32)
    lit[np.arange(w), h // 2, np.arange(w)] = 1  # image c: pixel (middle row, column c)
    reached = (np.asarray(features.predict_on_batch(lit))[:, h // 2].sum(-1)
               > 0)  # (input column, output column)
    return max(int(reached[:, w // 2 + k].sum()) for k in range(2**depth))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_receptive_field_is_what_the_network_sees(depth):
    from kit import model as unet

    assert unet.receptive_field(depth) == measured_receptive_field(depth)


def test_summary_prints_the_model_its_parameters_and_receptive_field(demo):
    from kit import model as unet

    raw, work = demo
    result = run_script("train.py", "--summary", "--raw", raw, "--workdir", work, "--image-size",
                        32, 48, "--width", 4, "--depth", 2)
    params = unet.build_unet((32, 48), width=4, depth=2).count_params()
    assert f"{params:,} parameters" in result.stdout and "receptive field 44x44" in result.stdout
    assert ("conv2d" in result.stdout.lower() and
            "Epoch" not in result.stdout)  # the layers, and no training


# ---------------------------------------------------------------- the report


def embedded_images(page):
    return {
        alt: base64.b64decode(data)
        for alt, data in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)">',
                                    page)
    }


def test_the_report_is_one_self_contained_page(trained_demo):
    raw, work, _ = trained_demo
    page = (work / "report.html").read_text()
    config = json.loads((work / "model" / "config.json").read_text())
    assert f"validation Dice {config['validation_dice_untuned']:.4f}" in page  # untuned first
    assert f"tuned {config['validation_dice']:.4f}" in page
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)',
                                                   page)  # nothing to fetch
    images = embedded_images(page)
    assert page.count("<img") == len(images) == 5
    assert {"training curves", "validation Dice distribution",
            "threshold and minimum area"} <= set(images)
    for data in images.values():
        assert read_rgb(data).std() > 10


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_the_report_renders_in_a_browser_with_its_curves_and_image_grids(trained_demo, tmp_path):
    raw, work, _ = trained_demo
    report, shot = work / "report.html", tmp_path / "report.png"
    subprocess.run([
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--force-device-scale-factor=1",
        "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,6000",
        report.as_uri()
    ], capture_output=True, timeout=120, check=True)
    screen = cv2.cvtColor(read_rgb(shot), cv2.COLOR_RGB2GRAY)
    images = embedded_images(report.read_text())
    grids = [alt for alt in images if "validation frames" in alt]
    assert len(grids) == 2
    found, places = {}, set()
    for alt in ["training curves", *grids]:
        picture = cv2.cvtColor(read_rgb(images[alt]), cv2.COLOR_RGB2GRAY)
        match = cv2.matchTemplate(screen, picture, cv2.TM_CCOEFF_NORMED)
        _, score, _, (x, y) = cv2.minMaxLoc(match)
        assert score > 0.99, f"{alt} is not on the rendered page (best match {score:.3f})"
        found[alt] = screen[y:y + picture.shape[0], x:x + picture.shape[1]]
        places.add((x, y))
    assert len(places) == 3  # three pictures, three places
    assert (found["training curves"] < 200).mean() > 0.01  # lines and text, not a blank box
    for alt in grids:  # ultrasound frames: many gray levels
        assert len(np.unique(found[alt])) > 100


def test_the_star_marks_the_epoch_kept_not_one_cut_short():
    """An epoch cut short by the time limit is logged with its (better) score but never kept."""
    from kit import figures

    history = pd.DataFrame({
        "epoch": [0, 1, 2],
        "val_dice": [0.2, 0.5, 0.9],
        "complete": [1.0, 1.0, 0.0]
    })
    assert figures.kept_epoch(history) == 1
    assert (figures.kept_epoch(history.drop(columns="complete")) == 2
            )  # older logs: every epoch counts


def test_an_epoch_cut_short_is_logged_incomplete_and_not_kept(tmp_path):
    """As the time limit does: stop in the middle of the third epoch."""
    import keras
    from kit import callbacks, figures

    class CutShort(keras.callbacks.Callback):

        def on_train_batch_end(self, batch, logs=None):
            self.model.stop_training = self.model.stop_training or (self.epoch == 2 and batch == 1)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    model = keras.Sequential([keras.Input((3, )), keras.layers.Dense(1)])
    model.compile("sgd", "mse", metrics=["mae"])
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    history = tmp_path / "history.csv"
    state = callbacks.TrainingState(tmp_path / "backup", {}, patience=10, monitor="val_mae")
    model.fit(
        x, x[:, :1], batch_size=4, epochs=5, validation_data=(x, x[:, :1]), verbose=0, callbacks=[
            callbacks.MarkCompleteEpochs(8),
            CutShort(),
            keras.callbacks.CSVLogger(history), state
        ])
    logged = pd.read_csv(history)
    assert logged["complete"].tolist() == [1.0, 1.0, 0.0]  # the third epoch is logged, cut short
    assert state.state["epoch"] == 2  # and never becomes a state to keep
    logged["val_dice"] = [0.1, 0.2, 0.9]
    assert figures.kept_epoch(logged) == 1


def test_resume_names_what_changed_in_the_users_words(tmp_path):
    from kit import callbacks
    from kit.files import UserError

    data = {"frames": 10, "shape": [32, 48], "classes": 1, "checksum": 5}
    saved = {"recipe": {"lr": 0.001, "image_size": [32, 48]}, "data": data}  # before --gate
    same = {"recipe": {"lr": 0.001, "image_size": (32, 48), "gate": False}, "data": data}
    callbacks.check_same_run(saved, same, tmp_path)  # a new setting at its default
    with pytest.raises(UserError, match="--gate was False in the interrupted run, now True"):
        callbacks.check_same_run(saved, {**same, "recipe": {"gate": True}}, tmp_path)
    with pytest.raises(UserError, match="--lr was 0.001 in the interrupted run, now 0.01"):
        callbacks.check_same_run(saved, {**same, "recipe": {"lr": 0.01}}, tmp_path)
    with pytest.raises(UserError, match=r"training arrays changed since the interrupted run "
                       r"\(12 frames, was 10\): run `python data.py` as before"):
        callbacks.check_same_run(saved, {**same, "data": {**data, "frames": 12}}, tmp_path)
    with pytest.raises(UserError, match="10 frames of other contents"):
        callbacks.check_same_run(saved, {**same, "data": {**data, "checksum": 6}}, tmp_path)


def test_with_a_time_limit_early_stopping_waits_for_half_the_planned_epochs(tmp_path):
    import time

    from kit import callbacks

    keras = callbacks.keras
    model = keras.Sequential([keras.Input((3, )), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.zeros((8, 3), "float32")  # nothing to learn: the monitored score never rises

    def epochs_run(deadline):
        state = callbacks.TrainingState(tmp_path / f"backup{deadline}", {}, patience=2,
                                        monitor="val_score", timed=deadline is not None)
        score = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: logs.update(val_score=0.0))
        history = model.fit(
            x, x[:, :1], epochs=10, verbose=0,
            callbacks=[score, callbacks.PlanEpochs(10, deadline, planned=10), state])
        return len(history.epoch)

    assert epochs_run(None) == 3  # no time limit: patience alone, as before
    assert epochs_run(time.time() + 3600) == 5  # half of the 10 planned epochs first


def test_the_epoch_plan_follows_the_pace_of_every_epoch_and_ends_at_the_deadline(monkeypatch):
    """One slow epoch (a busy machine) must not end the run early: the plan is made again after
    every epoch, from the mean pace of the epochs after the first."""
    from kit import callbacks

    now = [1000.0]
    monkeypatch.setattr(callbacks.time, "time", lambda: now[0])
    planner = callbacks.PlanEpochs(1000, deadline=1100.0)
    planner.set_model(types.SimpleNamespace(stop_training=False))
    durations, logs = [20.0, 10.0, 1.0, 1.0], {}
    for epoch, seconds in enumerate(durations):
        planner.on_epoch_begin(epoch)
        now[0] += seconds
        planner.on_epoch_end(epoch, logs)
    # 32 s spent; the pace since the first epoch is 4 s: 17 more epochs fit in the 68 s left
    assert planner.planned_epochs == 4 + 17 and logs["seconds"] == 1.0
    while not planner.model.stop_training:  # 1 s epochs from here on
        epoch += 1
        planner.on_epoch_begin(epoch)
        now[0] += 1.0
        planner.on_epoch_end(epoch, logs)
    assert now[0] <= 1100.0 and epoch + 1 >= 60  # ends by the deadline, having used most of it


def test_without_epochs_a_time_limit_plans_as_many_epochs_as_fit_uncapped(monkeypatch):
    from kit import callbacks

    now = [1000.0]
    monkeypatch.setattr(callbacks.time, "time", lambda: now[0])
    planner = callbacks.PlanEpochs(None, deadline=4600.0, guess=40)
    planner.set_model(types.SimpleNamespace(stop_training=False))
    assert planner.planned_epochs == 40  # the budget's guess until epochs are timed
    for epoch in range(3):
        planner.on_epoch_begin(epoch)
        now[0] += 1.0
        planner.on_epoch_end(epoch)
    assert planner.planned_epochs == 3 + 3597  # an hour of 1-s epochs: no cap of 1000
    assert not planner.model.stop_training


def phases_run(**recipe):
    from kit.recipe import Plan, Recipe

    epochs = recipe.pop("epochs", None)
    plan = Plan(size=(32, 32), classes=1, channels=1, loss="bce_dice", class_weights=None,
                precision="float32", folds=(0,), epochs=epochs, patience=None)
    return types.SimpleNamespace(recipe=Recipe(encoder="mobilenetv2", **recipe), plan=plan)


def recorded_fits(monkeypatch, planner, net, grows_to):
    from kit import training

    fits, unfrozen = [], []

    def fit(run, fold, net, data, chain, first, last):
        fits.append((first, last))
        planner.planned_epochs = grows_to  # the pace, once timed, buys more than the guess
        net.stop_training = last >= grows_to  # PlanEpochs stops the fit that reaches its plan

    monkeypatch.setattr(training, "fit", fit)
    monkeypatch.setattr(training, "unfreeze", lambda *a: unfrozen.append(len(fits)))  # fits before
    return fits, unfrozen


def test_a_plan_that_grows_past_the_epochs_of_its_fit_goes_on_in_another_fit(monkeypatch):
    from kit import training

    planner = types.SimpleNamespace(planned_epochs=5)
    net = types.SimpleNamespace(stop_training=False)
    fits, _ = recorded_fits(monkeypatch, planner, net, grows_to=12)
    training.train_phases(phases_run(), 0, net, None, [], 0, None, planner, False)
    assert fits == [(0, 5), (5, 12)]
    fits.clear()
    planner.planned_epochs, net.stop_training = 5, False
    training.train_phases(phases_run(epochs=5), 0, net, None, [], 0, None, planner, False)
    assert fits == [(0, 5)]  # --epochs caps: one fit, never more


def test_a_frozen_encoder_trains_alone_then_the_whole_network_goes_on(monkeypatch):
    from kit import training

    planner = types.SimpleNamespace(planned_epochs=6)
    net = types.SimpleNamespace(stop_training=False)
    fits, unfrozen = recorded_fits(monkeypatch, planner, net, grows_to=6)
    run = phases_run(freeze_encoder_epochs=2, epochs=6)
    training.train_phases(run, 0, net, None, [], 0, None, planner, True)
    assert fits == [(0, 2), (2, 6)] and unfrozen == [1]  # unfrozen once, at the switch
    fits.clear(), unfrozen.clear()
    net.stop_training = False
    training.train_phases(run, 0, net, None, [], 2, None, planner, True)  # resumed at it
    assert fits == [(2, 6)] and unfrozen == [0]
    fits.clear(), unfrozen.clear()
    net.stop_training = False
    few = phases_run(freeze_encoder_epochs=4, epochs=3)  # the cap comes first: never unfrozen
    training.train_phases(few, 0, net, None, [], 0, None, planner, True)
    assert fits == [(0, 3)] and not unfrozen
