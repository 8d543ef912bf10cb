"""visualize.py: the four panels, the frames it picks, and the models it predicts them with."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import run_script
from kit.files import UserError


def disc(shape, center, radius):
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, center, radius, 1, -1)
    return mask


def panels(fig, path):
    """The four panels of the figure's single row, cut out of the PNG it saved (RGB)."""
    from kit import figures

    figures.save(fig, path)
    png = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    crops = []
    for ax in fig.axes:
        x0, y0, x1, y1 = ax.get_window_extent().extents
        h = png.shape[0]
        crops.append(png[int(h - y1) + 2:int(h - y0) - 2, int(x0) + 2:int(x1) - 2].astype(int))
    return crops


def colour_fraction(rgb, colour, tolerance=60):
    return float((np.abs(rgb - colour).sum(-1) < tolerance).mean())


def is_gray(rgb):
    return np.abs(rgb - rgb[..., :1]).max() <= 2


def test_a_case_is_drawn_as_image_truth_prediction_and_overlay(tmp_path):
    from kit import figures

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (84, 116), dtype=np.uint8)
    truth = disc(image.shape, (40, 40), 15)
    mask = disc(image.shape, (70, 45), 15)
    prob = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3)
    case = dict(image=image, truth=truth, prob=prob, mask=mask, label="a case")
    image_panel, truth_panel, prediction_panel, overlay = panels(figures.draw_cases([case]),
                                                                 tmp_path / "a.png")

    assert is_gray(image_panel) and len(np.unique(image_panel)) > 100  # the image itself
    assert is_gray(truth_panel)
    white = (truth_panel > 200).all(-1).mean()  # the truth, as a binary mask
    assert abs(white - truth.mean()) < 0.02 and ((truth_panel < 50).all(-1).mean() + white) > 0.95
    assert not is_gray(prediction_panel)  # the probability, in colour
    assert colour_fraction(prediction_panel, (255, 0, 0)) > 0.002  # with the final mask outlined
    assert colour_fraction(overlay, (0, 255, 0)) > 0.002  # truth outline
    assert colour_fraction(overlay, (255, 0, 0)) > 0.002  # prediction outline
    green = np.argwhere((np.abs(overlay - (0, 255, 0)).sum(-1) < 60))
    red = np.argwhere((np.abs(overlay - (255, 0, 0)).sum(-1) < 60))
    assert green[:, 1].mean() < red[:, 1].mean()  # each where its mask is

    case["truth"] = None  # a test image: no truth
    _, truth_panel, _, overlay = panels(figures.draw_cases([case]), tmp_path / "b.png")
    assert (truth_panel < 50).all(-1).mean() > 0.9  # an empty panel, with a note
    assert (colour_fraction(overlay, (0, 255, 0)) == 0 and colour_fraction(overlay,
                                                                           (255, 0, 0)) > 0.002)


def test_validation_frames_are_the_trained_folds_and_predicted_by_their_own_model(trained_demo):
    from kit import cases as visualize, dataset, images as kit_images, inference as predict, metrics

    raw, work, _ = trained_demo
    table = pd.read_csv(work / "model" / "validation.csv")
    config = json.loads((work / "model" / "config.json").read_text())
    subjects = np.load(work / "imgs_subject_train.npy")
    folds = dataset.subject_folds(subjects, config["recipe"]["folds"], config["recipe"]["seed"])
    assert sorted(table["index"]) == list(range(len(subjects)))  # --fold all: every frame, once
    assert (table["fold"] == folds[table["index"]]).all() and set(table["fold"]) == {0, 1, 2}
    assert np.isclose(table["dice"].mean(), config["validation_dice"])

    # Re-predicted one by one, each by its own fold's model, frames score what training recorded.
    models, config = predict.load_models(work / "model")
    by_fold = visualize.fold_models(models, config)
    images, masks = np.load(work / "imgs_train.npy"), np.load(work / "imgs_mask_train.npy")
    positions = visualize.worst_positions(
        work, 4) + [int(p) for p in np.flatnonzero(table["fold"] == 2)[:2]]
    assert table["dice"].iloc[positions[:4]].tolist() == sorted(table["dice"])[:4]
    cases = visualize.training_cases(work, positions, models, config, validation_only=True)
    for position, case in zip(positions, cases):
        row = table.iloc[position]
        index, fold = int(row["index"]), int(row["fold"])
        assert np.array_equal(case["truth"], masks[index])
        own, _ = predict.probabilities([by_fold[fold]], images[[index]], 8, config.tta)
        others, _ = predict.probabilities([by_fold[(fold + 1) % 3]], images[[index]], 8, config.tta)
        assert np.allclose(
            kit_images.resize_stack(own, masks.shape[1:], "linear")[0], case["prob"], atol=1e-6)
        assert not np.allclose(own, others, atol=1e-3)
        assert case["mask"].sum() == row["pred_area"]
        assert np.isclose(
            metrics.dice_per_image(case["mask"][None], case["truth"][None])[0], row["dice"])


def test_the_command_line_writes_panels_and_grids(trained_demo):
    raw, work, _ = trained_demo
    result = run_script("visualize.py", "-n", 0, "--set", "test", "--raw", raw, "--workdir", work,
                        "--no-show")
    assert "Traceback" not in result.stderr and "I0000" not in result.stderr
    assert str(work / "visualize" / "test_0.png") in result.stdout
    single = cv2.imread(str(work / "visualize" / "test_0.png"))
    assert (single is not None and
            3 < single.shape[1] / single.shape[0] < 5)  # one row of four panels

    run_script("visualize.py", "--worst", 8, "--grid", "--raw", raw, "--workdir", work, "--no-show",
               "-q")
    grid = cv2.imread(str(work / "visualize" / "val_worst8.png"))
    assert grid is not None and grid.shape[0] > 6 * grid.shape[1] / 4 * 84 / 116  # eight rows


def test_any_image_file_with_its_mask_beside_it(trained_demo, tmp_path):
    import visualize

    raw, work, _ = trained_demo
    visualize.main([
        "-i",
        str(raw / "train" / "1_1.tif"),
        str(raw / "test" / "1.tif"), "--grid", "--workdir",
        str(work), "--output",
        str(tmp_path), "--no-show", "-q"
    ])
    sheet = cv2.imread(str(tmp_path / "images_grid.png"))
    assert sheet is not None and sheet.shape[0] > 1.5 * sheet.shape[1] / 4 * 84 / 116  # two rows


def test_bad_requests_are_user_errors(trained_demo):
    import visualize

    raw, work, _ = trained_demo
    n_test = len(np.load(work / "imgs_test.npy"))
    where = ["--raw", str(raw), "--workdir", str(work), "--no-show"]
    with pytest.raises(UserError,
                       match=f"-n {n_test} is out of range: --set test has {n_test} frames"):
        visualize.main(["-n", str(n_test), "--set", "test", *where])
    with pytest.raises(UserError, match="--worst picks validation frames"):
        visualize.main(["--worst", "3", "--set", "test", *where])
    with pytest.raises(UserError, match="not found: give the path of an image file"):
        visualize.main(["-i", str(raw / "nothing.tif"), *where])
