import numpy as np
import pytest

from kit.metrics import dice_per_image, mean_dice


def test_empty_versus_empty_scores_one():
    empty = np.zeros((1, 4, 4), bool)
    assert dice_per_image(empty, empty).tolist() == [1.0]


def test_one_stray_pixel_on_an_empty_frame_scores_zero():
    pred = np.zeros((1, 4, 4), bool)
    pred[0, 1, 1] = True
    assert dice_per_image(pred, np.zeros_like(pred)).tolist() == [0.0]
    assert dice_per_image(np.zeros_like(pred), pred).tolist() == [0.0]


def test_known_overlap():
    truth = np.zeros((1, 4, 4), bool)
    truth[0, :2, :2] = True  # 4 pixels
    pred = np.zeros_like(truth)
    pred[0, :2, :1] = True  # 2 pixels, both inside
    assert dice_per_image(pred, truth)[0] == pytest.approx(2 * 2 / 6)


def test_mean_over_images():
    truth = np.zeros((2, 3, 3), bool)
    truth[1, 0, 0] = True
    pred = truth.copy()
    pred[0, 2, 2] = True  # image 0: 0.0, image 1: 1.0
    assert mean_dice(pred, truth) == pytest.approx(0.5)


def test_keras_metric_agrees_with_numpy():
    from kit.model import DiceScore

    rng = np.random.default_rng(0)
    truth = (rng.random((6, 8, 8, 1)) < 0.3).astype("float32")
    truth[:2] = 0
    probs = rng.random((6, 8, 8, 1)).astype("float32")
    probs[0] = 0.1
    metric = DiceScore()
    metric.update_state(truth, probs)
    assert float(metric.result()) == pytest.approx(mean_dice(probs > 0.5, truth > 0.5), abs=1e-6)
