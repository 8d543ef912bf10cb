"""train.py --encoder: its weights file's errors, and the decoder warm-up of
--freeze-encoder-epochs (resumable at the switch). The whole pipeline: test_encoder_pipeline.py."""

import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import run_script

TINY = ["--folds", 3, "--batch-size", 4, "--width", 4, "--precision", "float32", "-q"]


def copy_arrays(source, work):
    """The demo's arrays only: other tests train in the shared demo folder."""
    work.mkdir(parents=True)
    for path in source.glob("*.npy"):
        shutil.copy(path, work)


def legacy_weights(path, constructor):
    """A random no-top backbone saved as keras.applications' downloads are (Keras 2's HDF5)."""
    from keras.src.legacy.saving import legacy_h5_format

    backbone = constructor(include_top=False, weights=None, input_shape=(32, 32, 3))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
    return backbone


def assert_refused(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stdout + result.stderr
    assert all(word in lines[0] for word in words), lines[0]


@pytest.mark.parametrize("case", ["absent", "another backbone"])
def test_a_weights_file_that_cannot_serve_is_one_line(demo, tmp_path, case):
    import keras

    work, weights = tmp_path / "work", tmp_path / "notop.h5"
    copy_arrays(demo[1], work)
    if case == "another backbone":
        legacy_weights(weights, keras.applications.EfficientNetV2B0)
    result = run_script("train.py", "--workdir", work, "--encoder", "mobilenetv2",
                        "--encoder-weights", weights, "--epochs", 1, "--image-size", 64, 96, *TINY,
                        check=False)
    what = "does not exist" if case == "absent" else "does not fit mobilenetv2"
    assert_refused(result, f"--encoder-weights {weights} {what}",
                   "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    assert not (work / "model/fold0.keras").exists()


# ---------------------------------------------------------------- the warm-up, in process


def tiny_backbone(include_top=False, weights=None, input_shape=None):
    """A keras.applications look-alike: five stride-2 convolutions, named for the skips."""
    from keras import Input, Model, layers

    x = inputs = Input(input_shape)
    for i in range(1, 6):
        x = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name=f"s{i}")(x)
    return Model(inputs, x, name="tiny")


def run_train(work, *extra):
    import train

    train.main([
        str(a) for a in ("--workdir", work, "--encoder", "tiny", "--image-size", 32, 64, "--epochs",
                         2, "--freeze-encoder-epochs", 1, "--no-augment", *TINY, *extra)
    ])


def saved_weights(work):
    import keras

    net = keras.models.load_model(work / "model/fold0.keras", compile=False)
    return net, net.get_weights()


def test_the_encoder_warms_up_frozen_and_resumes_at_the_switch(demo, tmp_path, monkeypatch):
    import keras

    from kit import callbacks, encoders, training

    # The last epoch's weights are saved, not the best one's: the tiny runs' scores are ties.
    monkeypatch.setattr(callbacks.TrainingState, "load_best", lambda self, model: False)
    import train

    monkeypatch.setattr(train, "ENCODERS", {**train.ENCODERS, "tiny": "tiny.h5"})  # choices
    monkeypatch.setitem(encoders.ENCODERS, "tiny",
                        encoders.Encoder(tiny_backbone, ("s1", "s2", "s3", "s4"), "tf"))
    whole = tmp_path / "whole"
    copy_arrays(demo[1], whole)
    keras.utils.set_random_seed(1)  # as train_fold seeds fold 0 of --seed 1
    start = encoders.encoder_of(training.model.encoder_unet("tiny", (32, 64), 1, 1, None,
                                                            4)).get_weights()
    run_train(whole, "--seed", 1)
    net, uninterrupted = saved_weights(whole)
    moved = [
        not np.array_equal(a, b) for a, b in zip(encoders.encoder_of(net).get_weights(), start)
    ]
    assert all(moved)  # trained once unfrozen
    assert (whole / "model/history_fold0.csv").read_text().count("\n") == 3  # one log, 2 epochs

    # Interrupted at the switch: the state after epoch 1 holds the frozen model's optimizer.
    work = tmp_path / "work"
    copy_arrays(demo[1], work)
    unfreeze = encoders.freeze

    def interrupt(model, frozen=True):
        if not frozen:
            raise KeyboardInterrupt
        unfreeze(model, frozen)

    monkeypatch.setattr(training.encoders, "freeze", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_train(work, "--seed", 1)
    assert json.loads((work / "model/backup_fold0/state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(training.encoders, "freeze", unfreeze)
    run_train(work, "--seed", 1, "--resume")
    assert all(map(np.array_equal, saved_weights(work)[1], uninterrupted))
