"""train.py --ema: the moving average of the weights is what validation scores, what the best
epoch keeps and what fold<i>.keras holds; an interrupted --ema run resumes to the same model."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

SIZE = (32, 48)


def run_train(work, *extra):
    import train

    train.main([
        str(a)
        for a in ("--workdir", work, "--image-size", *SIZE, "--width", 4, "--depth", 2, "--folds",
                  3, "--epochs", 3, "--batch-size", 8, "--precision", "float32", "-q", *extra)
    ])


def trained(demo, folder, *extra):
    work = folder / "work"
    work.mkdir(parents=True)
    for path in demo[1].glob("*.npy"):  # the demo's arrays only
        shutil.copy(path, work)
    run_train(work, *extra)
    return work


def saved(work):
    import keras

    return keras.models.load_model(work / "model/fold0.keras", compile=False)


@pytest.fixture(scope="module")
def ema_run(demo, tmp_path_factory):
    return trained(demo, tmp_path_factory.mktemp("ema"), "--ema")


def validation_set(work):
    """Fold 0's validation frames at the working size, as train.py makes them."""
    from kit import arrays, dataset, images

    x, y, subjects = arrays.load_training_set(work)
    val = dataset.subject_folds(subjects, 3, 42) == 0
    x = images.resize_stack(x[val], SIZE, "area")[..., None].astype("float32")
    return x, dataset.resize_masks(y[val], SIZE, 1)[..., None].astype("float32")


def test_the_saved_model_is_the_averaged_one_that_was_validated(ema_run, demo, tmp_path):
    from kit import model

    assert json.loads((ema_run / "model/config.json").read_text())["recipe"]["ema"] is True
    history = pd.read_csv(ema_run / "model/history_fold0.csv")
    best = history.iloc[int(history["val_dice"].to_numpy().argmax())]  # the first best
    net = saved(ema_run)
    net.compile(loss=model.bce_dice_loss, metrics=[model.DiceScore()])
    x, y = validation_set(ema_run)
    scores = net.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)  # as fit validates
    assert scores["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert scores["dice"] == pytest.approx(best["val_dice"], abs=1e-6)

    # The same seed without --ema: another model (same seed, same run: see the resume test).
    plain = saved(trained(demo, tmp_path)).get_weights()
    assert not all(map(np.array_equal, plain, net.get_weights()))


def test_an_interrupted_ema_run_resumes_to_the_same_model(ema_run, demo, tmp_path, monkeypatch):
    from kit import callbacks

    end_of_epoch = callbacks.TrainingState.on_epoch_end

    def killed_after_epoch_1(self, epoch, logs=None):
        end_of_epoch(self, epoch, logs)
        if self.state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.TrainingState, "on_epoch_end", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        trained(demo, tmp_path, "--ema")
    monkeypatch.setattr(callbacks.TrainingState, "on_epoch_end", end_of_epoch)
    run_train(tmp_path / "work", "--ema", "--resume")
    assert all(
        map(np.array_equal,
            saved(tmp_path / "work").get_weights(),
            saved(ema_run).get_weights()))
