"""train.py --gate: an image-level "is there anything" output beside the mask (the presence
head), its target in the training batches, the presence threshold tuned out of fold beside the
threshold and minimum area, and predict.py emptying the frames it doubts."""

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from kit import dataset, encoders, inference, metrics
from kit import model as unet
from kit.files import UserError

SIZE = (32, 48)

# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("kind", ["unet", "mobilenetv2"])
def test_a_gated_model_has_a_presence_output_and_loads_back(kind, tmp_path):
    import keras

    if kind == "unet":
        net = unet.build_unet((32, 32), width=4, depth=2, mean=100.0, std=20.0, gate=True)
    else:
        net = unet.encoder_unet("mobilenetv2", (32, 32), width=4, gate=True)
    assert net.output_names == [unet.MASK, unet.PRESENCE]
    assert unet.has_presence(net) and unet.mask_shape(net) == (None, 32, 32, 1)
    assert unet.classes_of(net) == 1
    net.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    mask, presence = (np.asarray(a) for a in loaded.predict_on_batch(x))
    assert mask.shape == (3, 32, 32, 1) and presence.shape == (3, 1)
    assert presence.dtype == np.float32 and ((0 < presence) & (presence < 1)).all()
    for a, b in zip(net.predict_on_batch(x), (mask, presence)):
        assert np.allclose(np.asarray(a), b, atol=1e-6)
    plain = unet.build_unet((32, 32), width=4, depth=2)
    assert not unet.has_presence(plain) and unet.mask_shape(plain) == (None, 32, 32, 1)


def test_forward_averages_presence_over_models_and_the_flip():

    class Fixed:
        """A stand-in gated model: presence 0.2 for an image, 0.6 for its mirror image."""

        input_shape, output_shape = (None, 4, 6, 1), [(None, 4, 6, 1), (None, 1)]

        def __init__(self, shift):
            self.shift = shift

        def predict_on_batch(self, x):
            mirrored = x[:, 0, 0, 0] < x[:, 0, -1, 0]
            presence = np.where(mirrored, 0.6, 0.2) + self.shift
            return [np.full(x.shape, 0.5, np.float32), presence[:, None].astype(np.float32)]

    x = np.zeros((2, 4, 6), np.float32)
    x[:, :, 0] = 9  # bright on the left: the flip is bright on the right
    probs, presence = inference.forward([Fixed(0.0), Fixed(0.1)], x, tta=True)
    # Each model averaged over the image and its flip, then the two models averaged.
    assert probs.shape == (2, 4, 6) and np.allclose(presence, ((0.2 + 0.6) + (0.3 + 0.7)) / 4)
    probs, presence = inference.forward([Fixed(0.0)], x, tta=False)
    assert np.allclose(presence, 0.2)
    plain = unet.build_unet((16, 16), width=2, depth=1)
    assert inference.probabilities([plain], np.zeros((3, 16, 16), np.uint8), 2, True)[1] is None


# ---------------------------------------------------------------- the training target


def test_the_presence_target_is_that_of_the_augmented_mask():
    """Masks of one pixel in a corner: the augmentation's shifts and zooms push some out of the
    frame, and their targets must then say "empty"."""
    n = 64
    images = np.random.default_rng(0).uniform(0, 255, (n, 32, 32)).astype(np.uint8)
    masks = np.zeros((n, 32, 32), np.uint8)
    masks[n // 2:, 0, 0] = 1  # the second half holds a nerve of one pixel

    def targets(augment):
        ds = dataset.dataset(images, masks, 16, seed=3, epochs=range(2), shuffle=augment,
                             augment=augment, presence=True)
        pairs = [(np.asarray(t[unet.MASK]), np.asarray(t[unet.PRESENCE])) for _, t in ds]
        return (np.concatenate(a) for a in zip(*pairs))

    mask, presence = targets(augment=False)
    assert presence.shape == (2 * n, 1)
    assert np.array_equal(presence[:, 0], np.tile(masks.max(axis=(1, 2)), 2))  # in order
    mask, presence = targets(augment=True)
    assert set(np.unique(presence)) == {0.0, 1.0}
    assert np.array_equal(presence[:, 0], mask.max(axis=(1, 2, 3)) > 0)
    assert (presence == 0).sum() > n  # more than the 2 x 32 empty masks: some were pushed out


# ---------------------------------------------------------------- tuning


def stray_blobs(n_empty, n_nerve, size=24):
    """Probabilities that the mask threshold and minimum area cannot clean: every frame shows a
    confident square of the same size, a true nerve on the last n_nerve frames, a stray blob on
    the empty ones."""
    n = n_empty + n_nerve
    probs = np.full((n, size, size), 0.02, np.float32)
    truth = np.zeros((n, size, size), np.uint8)
    probs[:, 6:14, 6:14] = 0.9
    truth[n_empty:, 6:14, 6:14] = 1
    return probs, truth


def test_tuning_takes_the_presence_gate_where_it_finds_the_empty_frames(caplog):
    probs, truth = stray_blobs(10, 10)
    presence = np.r_[np.full(10, 0.25), np.full(10, 0.85)].astype(np.float32)
    grid = []
    with caplog.at_level(logging.INFO, logger="kit.inference"):
        post = inference.tune_postprocessing(probs, truth, 1.0, grid, presence)
    assert 0.25 < post["presence_threshold"] <= 0.85
    pred = inference.final_masks(probs, truth.shape[1:], **post, presence=presence)
    assert metrics.mean_dice(pred, truth) == 1.0
    tuning = pd.DataFrame(grid, columns=["threshold", "min_area", "presence_threshold", "dice"])
    assert set(tuning["presence_threshold"].round(1)) == {round(p, 1) for p in np.arange(0, 1, .1)}
    ungated = tuning[tuning["presence_threshold"] == 0]["dice"].max()
    assert ungated == pytest.approx(0.5) and tuning["dice"].max() == pytest.approx(1.0)
    assert "without the presence gate: 0.5000" in caplog.text  # what the gate bought


def test_tuning_leaves_the_gate_off_where_presence_says_nothing():
    probs, truth = stray_blobs(10, 10)
    # Half of the empty frames and half of the frames with a nerve look empty: any presence
    # threshold that empties a stray blob empties a nerve too.
    presence = np.tile([0.2, 0.8], 10).astype(np.float32)
    grid = []
    post = inference.tune_postprocessing(probs, truth, 1.0, grid, presence)
    assert post["presence_threshold"] == 0.0
    assert max(d for *_, p, d in grid if p > 0) <= max(d for *_, p, d in grid if p == 0)
    # Every mask wrong, so that emptying them all scores best: presence 0.5 everywhere does it
    # at the first threshold with a presence threshold of 0.6, a threshold of 0.5 later without.
    wrong = np.roll(probs, 10, axis=2) * 0.5
    post = inference.tune_postprocessing(wrong, truth, 1.0, [], np.full(20, 0.5, np.float32))
    assert post["presence_threshold"] == 0.0 and post["threshold"] >= 0.45
    assert not inference.final_masks(wrong, truth.shape[1:], **post).any()
    # Without presence (a model without the head) only the ungated candidates are tried.
    alone = []
    assert inference.tune_postprocessing(probs, truth, 1.0, alone)["presence_threshold"] == 0.0
    assert {p for *_, p, _ in alone} == {0.0} and len(alone) * 10 == len(grid)


def test_the_minimum_area_lies_midway_between_the_blobs_it_empties_and_the_masks_it_keeps():
    # A stray blob of 4 pixels on the empty frame; true nerves of 64 pixels on the others,
    # predicted exactly. Every minimum area above 4 and up to 64 scores the same.
    probs, truth = stray_blobs(1, 4)
    probs[0] = 0.02
    probs[0, 1:3, 1:3] = 0.9
    grid = []
    post = inference.tune_postprocessing(probs, truth, 1.0, grid)
    best = max(d for *_, d in grid)
    tied = [a for t, a, _, d in grid if d == pytest.approx(best) and t == post["threshold"]]
    assert min(tied) <= 9 and max(tied) == 64  # the lowest, right above the blob, is one of them
    assert post["min_area"] == 16  # the geometric middle of 4 and 64
    pred = inference.final_masks(probs, truth.shape[1:], **post)
    assert metrics.mean_dice(pred, truth) == 1.0
    unseen = np.full((2, 24, 24), 0.02, np.float32)
    unseen[0, 2:5, 2:5] = 0.9  # 9 pixels: emptied
    unseen[1, 2:7, 2:7] = 0.9  # 25: kept
    assert inference.final_masks(unseen, (24, 24), **post).reshape(2, -1).sum(1).tolist() == [0, 25]
    # Nothing to empty on the validation frames: no minimum area, however large the masks.
    post = inference.tune_postprocessing(probs[1:], truth[1:], 1.0)
    assert post["min_area"] == 0


def test_final_masks_empty_the_frames_under_the_presence_threshold():
    probs, _ = stray_blobs(0, 4)
    presence = np.array([0.1, 0.6, 0.4, 0.5], np.float32)
    masks = inference.final_masks(probs, (48, 48), 0.5, 0, presence=presence,
                                  presence_threshold=0.5)
    assert masks.shape == (4, 48, 48)
    assert [bool(m.any()) for m in masks] == [False, True, False, True]
    ungated = inference.final_masks(probs, (48, 48), 0.5, 0, presence=presence)
    assert all(m.any() for m in ungated)  # presence_threshold 0: the gate unused
    assert np.array_equal(ungated[1], masks[1])


# ---------------------------------------------------------------- train.py and predict.py


def arrays_of(demo, work, classes=None):
    work.mkdir(parents=True)
    for path in demo[1].glob("*.npy"):  # the demo's arrays only
        shutil.copy(path, work)
    if classes:
        (work / "data.json").write_text(json.dumps({"classes": classes}))
    return work


def train(work, *extra):
    import train as script

    script.main([
        str(a)
        for a in ("--workdir", work, "--image-size", *SIZE, "--width", 4, "--depth", 2, "--folds",
                  3, "--epochs", 2, "--batch-size", 8, "--precision", "float32", "-q", *extra)
    ])


def predict(work, **config):
    """predict.py with config.json's values changed by `config` (restored afterwards)."""
    import predict as script

    path = work / "model/config.json"
    saved = path.read_text()
    path.write_text(json.dumps({**json.loads(saved), **config}))
    try:
        script.main(["--workdir", str(work), "-q", "--previews", "0"])
    finally:
        path.write_text(saved)
    return np.load(work / "imgs_mask_test.npy")


def test_train_and_predict_with_the_gate(demo, tmp_path):
    work = arrays_of(demo, tmp_path / "work")
    train(work, "--gate")
    config = json.loads((work / "model/config.json").read_text())
    assert config["recipe"]["gate"] is True
    assert config["presence_threshold"] in [0.0, *inference.PRESENCE_THRESHOLDS]
    history = pd.read_csv(work / "model/history_fold0.csv")
    assert {"dice", "val_dice", "presence_loss", "val_presence_loss"} <= set(history)
    tuning = pd.read_csv(work / "model/tuning.csv")
    chosen = tuning[np.isclose(tuning["threshold"], config["threshold"])
                    & np.isclose(tuning["presence_threshold"], config["presence_threshold"])]
    assert chosen["dice"].max() == pytest.approx(tuning["dice"].max())
    first = chosen.iloc[int(chosen["dice"].to_numpy().argmax())]  # its area, centred in its gap
    assert (config["min_area"] == 0) == (first["min_area"] == 0)
    ungated = tuning[tuning["presence_threshold"] == 0]["dice"].max()
    assert (config["presence_threshold"] > 0) == (tuning["dice"].max() > ungated + 1e-9)
    assert len(np.load(work / "model/oof.npz")["presence"]) == len(
        pd.read_csv(work / "model/validation.csv"))

    masks = predict(work)
    test = np.load(work / "imgs_test.npy")
    assert masks.shape == test.shape[:3] and masks.max() <= 1
    report = (work / "report.html").read_text()
    assert "presence threshold" in report and "best Dice without the presence gate" in report

    # Threshold 0 fills every mask; the presence gate then empties exactly the doubted frames.
    models, _ = inference.load_models(work / "model")
    assert unet.has_presence(models[0])
    _, presence = inference.probabilities(models, test, 64, config["tta"])
    ranked = np.sort(presence)
    gap = int(np.argmax(np.diff(ranked)))  # a cut far from every frame's presence
    assert ranked[gap + 1] - ranked[gap] > 1e-4
    cut = float(ranked[gap] + ranked[gap + 1]) / 2
    masks = predict(work, threshold=0.0, min_area=0, presence_threshold=cut)
    assert np.array_equal(masks.reshape(len(masks), -1).all(1), presence >= cut)
    assert not masks.reshape(len(masks), -1).any(1)[presence < cut].any()


def test_an_encoder_unet_trains_with_the_gate(demo, tmp_path, monkeypatch):
    import keras
    from keras import Input, Model, layers

    import train as script

    def tiny_backbone(include_top, weights, input_shape):
        """A keras.applications look-alike: five stride-2 convolutions, named for the skips."""
        x = inputs = Input(input_shape)
        for i in range(1, 6):
            x = layers.Conv2D(4, 3, strides=2, padding="same", name=f"s{i}")(x)
        return Model(inputs, x, name="tiny")

    monkeypatch.setattr(script, "ENCODERS", {**script.ENCODERS, "tiny": "tiny.h5"})  # choices
    monkeypatch.setitem(encoders.ENCODERS, "tiny",
                        encoders.Encoder(tiny_backbone, ("s1", "s2", "s3", "s4"), "tf"))
    work = arrays_of(demo, tmp_path / "work")
    script.main([
        str(a) for a in ("--workdir", work, "--encoder", "tiny", "--gate", "--image-size", 32, 64,
                         "--epochs", 1, "--folds", 3, "--batch-size", 8, "--width", 4,
                         "--precision", "float32", "-q")
    ])
    net = keras.models.load_model(work / "model/fold0.keras", compile=False)
    assert unet.has_presence(net) and encoders.encoder_of(net) is not None
    assert "val_dice" in pd.read_csv(work / "model/history_fold0.csv")
    assert json.loads((work / "model/config.json").read_text())["recipe"]["gate"] is True


REFUSED = {
    "label masks": (2, [], "--gate is for binary masks"),
    "patches": (None, ["--patch", 32], "--gate judges whole images, --patch 32")
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_gate_refuses_label_masks_and_patches(demo, tmp_path, case):
    classes, extra, words = REFUSED[case]
    work = arrays_of(demo, tmp_path / "work", classes)
    with pytest.raises(UserError, match=words) as refused:
        train(work, "--gate", *extra)
    assert "\n" not in str(refused.value) and "drop" in str(refused.value)
    assert not (work / "model").exists()
