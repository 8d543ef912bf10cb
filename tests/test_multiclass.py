"""Label masks (0 background, 1..K classes): categorical losses, per-class scores, a softmax
U-Net end to end on a generated set of mixed sizes, and on the nerve ultrasound set's labels."""

import json

import numpy as np
import pytest

from kit import dataset, metrics
from kit.files import UserError
from kit import model as unet
from conftest import run_script, shared
from folder_sets import read_labels, write_pairs
from kit.rle import read_submission, rle_decode


def one_hot(labels, classes):
    return np.eye(classes + 1, dtype="float32")[labels]


@pytest.mark.parametrize("name", ["cce", "multiclass_dice", "cce_dice", "weighted_cce"])
def test_categorical_losses_are_lowest_for_a_perfect_prediction(name):
    loss = unet.loss_for(name, 2, [0.5, 2.0, 4.0])
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 2:5, 2:6] = 1
    labels[1, 4:8, 0:3] = 2
    truth = one_hot(labels, 2)
    perfect = float(loss(truth, np.clip(truth, 1e-4, 1)))
    uniform = float(loss(truth, np.full_like(truth, 1 / 3)))
    wrong = float(loss(truth, one_hot((labels + 1) % 3, 2)))
    assert perfect < uniform < wrong


def test_weighted_cross_entropy_counts_rare_classes_more():
    truth = one_hot(np.array([[[0, 1]]]), 1)
    pred = np.array([[[[0.9, 0.1], [0.9, 0.1]]]], "float32")  # the class-1 pixel is wrong
    plain = float(unet.cce_loss(truth, pred))
    weighted = float(unet.weighted_cce([1.0, 5.0])(truth, pred))
    assert weighted > 2 * plain


def test_losses_are_checked_against_the_masks():
    assert (unet.loss_for("bce_dice", 3)
            is unet.cce_dice_loss)  # the default stands for its counterpart
    with pytest.raises(UserError, match="label masks"):
        unet.loss_for("cce", 1)
    with pytest.raises(UserError, match="binary masks"):
        unet.loss_for("tversky", 2)


def test_multiclass_metric_matches_the_per_class_scores():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (6, 10, 12)).astype(np.uint8)
    truth[0] = 0  # classes absent from both count as 1
    pred = np.where(rng.random(truth.shape) < 0.7, truth,
                    rng.integers(0, 3, truth.shape)).astype(np.uint8)
    pred[0] = 0
    metric = unet.MulticlassDiceScore()
    metric.update_state(one_hot(truth, 2), one_hot(pred, 2) * 0.8 + 0.05)
    scores = metrics.class_scores(pred, truth, 2)
    assert float(metric.result()) == pytest.approx(np.mean([d for d, _ in scores.values()]),
                                                   abs=1e-5)
    assert scores[1][0] == pytest.approx(metrics.dice_per_image(pred == 1, truth == 1).mean())
    assert all(0 < j < d < 1 for d, j in scores.values())  # IoU below Dice


def test_label_masks_shrink_by_majority_not_by_blending():
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, :, 4:] = 2  # 0 beside 2: blending would make 1s
    small = dataset.resize_masks(labels, (4, 4), 2)
    assert set(np.unique(small)) == {0, 2} and (small[0, :, 2:] == 2).all()
    weights = dataset.class_weights(labels, 2)
    assert weights[0] == weights[2] == 1.0 and weights[1] == 1.0  # equal shares; class 1 absent


def test_weights_of_another_run_load_where_they_fit(tmp_path):
    import keras

    source = unet.build_unet((32, 32), 1, 1, 4, 2, mean=10.0, std=2.0)
    source.save(tmp_path / "binary.keras")
    target = unet.build_unet((48, 48), 3, 2, 4, 2, mean=100.0, std=50.0)
    fresh = [w.copy() for w in target.get_weights()]
    unet.load_initial_weights(target, tmp_path / "binary.keras")

    def kernels(net):
        return [
            layer.get_weights()[0] for layer in net.layers
            if isinstance(layer, keras.layers.Conv2D)
        ]

    before = kernels(unet.build_unet((48, 48), 3, 2, 4, 2))
    for k, (loaded, original, new) in enumerate(zip(kernels(target), kernels(source), before)):
        if k in (0, len(before) - 1):  # 3 channels in, 4 classes out: kept fresh
            assert loaded.shape != original.shape
        else:  # every inner layer came across
            assert np.array_equal(loaded, original) and not np.array_equal(loaded, new)
    assert any(not np.array_equal(a, b) for a, b in zip(fresh, target.get_weights()))
    norm = [layer for layer in target.layers if isinstance(layer, keras.layers.Normalization)][0]
    normalised = keras.Model(target.input, norm.output)(np.full((1, 48, 48, 3), 150.0, "float32"))
    assert np.allclose(np.asarray(normalised), 1.0, atol=1e-5)  # this data set's statistics stay
    with pytest.raises(UserError, match="not found"):
        unet.load_initial_weights(target, tmp_path / "missing.keras")


@pytest.mark.slow
def test_a_softmax_unet_end_to_end_on_mixed_sizes_in_colour(tmp_path):
    sizes = [(48, 64), (64, 48), (56, 56)] * 6
    write_pairs(tmp_path / "img", tmp_path / "msk", sizes, classes=2)
    write_pairs(tmp_path / "test", tmp_path / "test_msk", [(40, 72), (64, 64), (50, 46)], classes=2,
                seed=1)
    work = tmp_path / "work"
    run_script("data.py", "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--classes", 2,
               "--channels", 3, "--test-images", tmp_path / "test", "--test-masks",
               tmp_path / "test_msk", "--workdir", work, "-q")
    assert np.load(work / "imgs_train.npy").shape == (18, 64, 64, 3)
    result = run_script("train.py", "--workdir", work, "--epochs", 3, "--image-size", 32, 32,
                        "--width", 8, "--depth", 2, "--folds", 3, "--batch-size", 4, "--loss",
                        "weighted_cce")
    for line in ("class 1: Dice", "class 2: Dice", "mean:    Dice"):
        assert line in result.stdout
    config = json.loads((work / "model" / "config.json").read_text())
    assert set(config["class_scores"]) == {"1", "2"}  # the classes of data.json
    assert len(config["plan"]["class_weights"]) == 3

    run_script("predict.py", "--workdir", work, "-q", "--png", tmp_path / "png")
    masks, test_sizes = np.load(work / "imgs_mask_test.npy"), np.load(work / "imgs_size_test.npy")
    assert masks.shape == (3, 64, 72) and masks.max() <= 2
    for mask, (h, w), name in zip(masks, test_sizes, np.load(work / "imgs_id_test.npy")):
        assert not mask[h:].any() and not mask[:, w:].any()
        assert np.array_equal(read_labels(tmp_path / "png" / f"{name}.png"),
                              mask[:h, :w])  # at its own size

    result = run_script("submission.py", "--workdir", work, "-q")
    assert "class 2: Dice" in result.stdout
    ids = np.load(work / "imgs_id_test.npy")
    shapes = {f"{i}_{c}": tuple(s) for i, s in zip(ids, test_sizes) for c in (1, 2)}
    rows = read_submission(work / "submission.csv", shapes, list(shapes))
    for i, mask, (h, w) in zip(ids, masks, test_sizes):
        for c in (1, 2):
            assert np.array_equal(rle_decode(rows[f"{i}_{c}"], (h, w)), mask[:h, :w] == c)


@pytest.mark.slow
def test_real_nerve_ultrasound_three_labels(tmp_path):
    """usgra-nerve: palette masks 0 background, 1 nerve, 2 vessel; RGB and gray images of three
    sizes."""
    usgra = shared("usgra-nerve")
    work = tmp_path / "work"
    run_script("data.py", "--images", usgra / "images", "--masks", usgra / "masks", "--classes", 2,
               "--test-images", usgra / "test" / "images", "--test-masks", usgra / "test" / "masks",
               "--workdir", work, "-q")
    assert len(np.unique(np.load(work / "imgs_size_train.npy"), axis=0)) == 3
    result = run_script("train.py", "--workdir", work, "--epochs", 2, "--image-size", 64, 64,
                        "--width", 8, "--depth", 2, "--batch-size", 16)
    assert "class 1: Dice" in result.stdout and "class 2: Dice" in result.stdout
    run_script("predict.py", "--workdir", work, "-q")
    masks = np.load(work / "imgs_mask_test.npy")
    assert masks.shape == (40, 632, 761) and set(np.unique(masks)) <= {0, 1, 2}
    result = run_script("submission.py", "--workdir", work, "-q")
    printed = [float(result.stdout.split(f"class {c}: Dice")[1].split()[0]) for c in (1, 2)]
    expected = metrics.class_scores(masks, np.load(work / "imgs_truth_test.npy"),
                                    2)  # the CSV says what the masks say
    assert printed == pytest.approx([expected[1][0], expected[2][0]], abs=1e-4)
    assert (work / "submission.csv").read_text().count("\n") == 1 + 40 * 2
