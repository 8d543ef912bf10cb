"""The frames visualize.py and the report show (kit/cases.py) and the report page itself
(kit/report.py), on a run folder written here with stand-in fold models: no training. The same
on a trained run: test_visualize.py and test_report.py (slow)."""

import re

import cv2
import numpy as np
import pandas as pd
import pytest

from kit import cases, report
from kit.config import Config
from kit.files import UserError

SIZE = (8, 10)  # the stand-in models' working size
FOLD_P = [0.2, 0.6, 0.9]  # what each fold's model predicts everywhere


class Constant:
    """A stand-in fold model: the probability p at every pixel, whatever the image."""

    input_shape = output_shape = (None, *SIZE, 1)

    def __init__(self, p):
        self.p = p

    def predict_on_batch(self, x):
        return np.full((*x.shape[:3], 1), self.p, np.float32)

    def count_params(self):
        return 1234


def run_folder(tmp_path, frames=6, validated=5):
    """A work folder as train.py leaves it: arrays, validation.csv (the first `validated` frames,
    folds 0, 1, 2, ...), tuning.csv and each fold's history. Returns (work, models, config)."""
    rng = np.random.default_rng(0)
    work = tmp_path / "work"
    (work / "model").mkdir(parents=True)
    images = rng.integers(0, 255, (frames, 16, 20), dtype=np.uint8)
    masks = np.zeros((frames, 16, 20), np.uint8)
    masks[[0, 3, 4, 5], 4:9, 5:12] = 1  # frame 0, the best validated, holds a mask
    np.save(work / "imgs_train.npy", images)
    np.save(work / "imgs_mask_train.npy", masks)
    np.save(work / "imgs_subject_train.npy", np.arange(frames) // 2 + 1)
    test = rng.integers(0, 255, (2, 16, 20), dtype=np.uint8)
    np.save(work / "imgs_test.npy", test)
    np.save(work / "imgs_id_test.npy", np.array([4, 9], np.int32))
    final = np.zeros((2, 16, 20), np.uint8)
    final[1, :3, :3] = 1
    np.save(work / "imgs_mask_test.npy", final)  # test frame 4 predicted empty
    index = np.arange(validated)
    pd.DataFrame({
        "index": index,
        "subject": index // 2 + 1,
        "fold": index % 3,
        "truth_area": masks[index].reshape(validated, -1).sum(1),
        "pred_area": np.where(index % 2, 35, 0),
        "dice": [0.9, 0.1, 0.5, 0.3, 0.8][:validated]
    }).to_csv(work / "model/validation.csv", index=False)
    pd.DataFrame([(t, a, 0.0, 0.5 + t / 10 - a / 1000) for t in (0.3, 0.5, 0.7) for a in (0, 20)],
                 columns=["threshold", "min_area", "presence_threshold",
                          "dice"]).to_csv(work / "model/tuning.csv", index=False)
    for fold in range(3):
        pd.DataFrame({
            "epoch": [0, 1, 2],
            "loss": [0.9, 0.6, 0.5],
            "val_loss": [1.0, 0.8, 0.7],
            "dice": [0.2, 0.4, 0.5],
            "val_dice": [0.1, 0.3, 0.35],
            "learning_rate": [1e-3, 1e-3, 5e-4]
        }).to_csv(work / f"model/history_fold{fold}.csv", index=False)
    config = Config(folds=[f"fold{k}.keras" for k in range(3)], threshold=0.5, tta=False,
                    validation_dice=0.52, validation_dice_untuned=0.47, original_size=[16, 20],
                    recipe={"epochs": 3, "width": 4})
    return work, [Constant(p) for p in FOLD_P], config


def test_a_validation_frame_is_predicted_by_its_own_folds_model_any_other_by_all(tmp_path):
    work, models, config = run_folder(tmp_path)
    assert cases.fold_models(models, config) == dict(enumerate(models))
    assert cases.worst_positions(work, 3) == [1, 3, 2]  # Dice 0.1, 0.3, 0.5
    shown = cases.training_cases(work, [0, 1, 2, 4], models, config, validation_only=True)
    masks = np.load(work / "imgs_mask_train.npy")
    for position, case in zip([0, 1, 2, 4], shown):
        fold = position % 3
        assert case["prob"].shape == (16, 20) and np.allclose(case["prob"], FOLD_P[fold])
        assert case["mask"].all() == (FOLD_P[fold] > config.threshold)
        assert case["mask"].any() == case["mask"].all()  # a constant probability: all or none
        assert np.array_equal(case["truth"], masks[position]) and f"fold {fold}" in case["label"]
    # Frame 5 was never validated: all three models, averaged.
    (unseen, ) = cases.training_cases(work, [5], models, config, validation_only=False)
    assert np.allclose(unseen["prob"], np.mean(FOLD_P)) and "seen in training" in unseen["label"]
    with pytest.raises(UserError, match="-n 5 is out of range: --set val has 5 frames"):
        cases.training_cases(work, [5], models, config, validation_only=True)


def test_test_frames_and_image_files_come_with_their_truth_where_there_is_one(tmp_path):
    work, models, config = run_folder(tmp_path)
    raw = tmp_path / "raw"
    (raw / "test_masks").mkdir(parents=True)
    truth = np.zeros((16, 20), np.uint8)
    truth[2:6, 3:9] = 255
    cv2.imwrite(str(raw / "test_masks/9_mask.tif"), truth)
    first, second = cases.test_cases(work, raw, None, [0, 1], models, config)
    assert first["truth"] is None and "id 4" in first["label"]  # no 4_mask.tif
    assert np.array_equal(second["truth"], truth // 255) and "id 9" in second["label"]
    assert np.allclose(second["prob"], np.mean(FOLD_P))  # a test frame: every model

    image = tmp_path / "scan.png"
    cv2.imwrite(str(image), np.full((12, 14), 90, np.uint8))
    (case, ) = cases.file_cases([image], models, config)
    assert case["image"].shape == (12, 14) and case["truth"] is None and case["label"] == "scan.png"
    assert case["mask"].shape == (12, 14)
    with pytest.raises(UserError, match="not found: give the path of an image file"):
        cases.file_cases([tmp_path / "absent.png"], models, config)


def test_a_validation_table_that_is_missing_or_of_other_arrays_is_refused(tmp_path):
    work, models, config = run_folder(tmp_path, frames=6)
    np.save(work / "imgs_train.npy", np.load(work / "imgs_train.npy")[:3])
    np.save(work / "imgs_mask_train.npy", np.load(work / "imgs_mask_train.npy")[:3])
    np.save(work / "imgs_subject_train.npy", np.arange(3))
    with pytest.raises(UserError, match=r"was trained on other arrays than .* \(its validation.csv names other frames\)"):
        cases.training_cases(work, [0], models, config, validation_only=True)
    (work / "model/validation.csv").unlink()
    with pytest.raises(UserError, match=r"validation.csv not found: run `python train.py`"):
        cases.worst_positions(work, 1)


def embedded(page):
    return re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)


def test_the_report_is_one_page_of_the_runs_numbers_and_pictures(tmp_path):
    work, models, config = run_folder(tmp_path)
    masks = np.load(work / "imgs_mask_test.npy")  # predict.py hands the report its masks
    page = report.write_report(work, models, config, masks).read_text()
    assert "validation Dice 0.4700 (tuned 0.5200)" in page  # untuned first
    assert "mean over 5 frames of 3 subjects" in page
    assert "test frames predicted empty</th><td>50% of 2" in page
    assert "fold0.keras, fold1.keras, fold2.keras (averaged)" in page and "1,234 parameters" in page
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)
    assert embedded(page) == [
        "training curves", "validation Dice distribution", "threshold and minimum area",
        "the 4 worst validation frames", "the 1 best validation frames with a mask"
    ]
    assert "presence threshold" not in page  # no --gate: not mentioned

    # A run without its records (an older train.py, or --no-tune) still gets its page.
    (work / "model/validation.csv").unlink()
    (work / "model/tuning.csv").unlink()
    page = report.write_report(work, models, config).read_text()
    assert page.count(report.NO_TABLE) == 2 and "not tuned (train.py --no-tune)" in page
    assert embedded(page) == ["training curves"]


def test_the_gate_and_the_budget_are_said_in_words():
    assert report.presence_text(0.0).startswith("0.0: the gate unused")
    assert report.presence_text(0.4).startswith("0.4: an image whose presence probability")
    tuning = pd.DataFrame({"presence_threshold": [0.0, 0.0, 0.5], "dice": [0.6, 0.7, 0.75]})
    gain = report.gate_gain(tuning, Config(folds=["fold0.keras"], presence_threshold=0.5))
    assert "without the presence gate 0.7000, with it 0.7500" in gain
    assert report.gate_gain(tuning.iloc[:2], Config(folds=["fold0.keras"])) == ""
    assert report.plan_text(None, 48, 32) == "48x32, given (--image-size, --patch) or resumed"
    plan = {"mask_diameter": 23.6, "objects_size": [32, 48], "seconds_per_step": {"32x48": 0.25},
            "predicted_epochs": 40, "seconds": 600}
    assert report.plan_text(plan, 64, 48) == (
        "64x48: masks 24 px across (48x32 for them); training steps took 0.25 s at 32x48: about "
        "40 epochs in 600 s")
