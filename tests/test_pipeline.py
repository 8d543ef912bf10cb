"""The four scripts one after another on a tiny demo competition."""

import json

import numpy as np

from conftest import run_script
from kit.rle import read_submission, rle_decode


def test_demo_pipeline_end_to_end(demo):
    raw, work = demo
    result = run_script("train.py", "--raw", raw, "--workdir", work, "--epochs", 4, "--folds", 3,
                        "--width", 8, "--depth", 2, "--image-size", 48, 64, "--batch-size", 8)
    assert "validation Dice" in result.stdout
    assert "Traceback" not in result.stderr and "I0000" not in result.stderr  # no framework noise
    config = json.loads((work / "model" / "config.json").read_text())
    assert config["folds"] == ["fold0.keras"] and 0 < config["threshold"] < 1
    assert (work / "model" / "history_fold0.csv").read_text().count("\n") >= 2

    run_script("predict.py", "--raw", raw, "--workdir", work, "-q")
    masks = np.load(work / "imgs_mask_test.npy")
    images = np.load(work / "imgs_test.npy")
    assert masks.shape == images.shape and masks.dtype == np.uint8 and masks.max() <= 1
    assert len(list((work / "preview").glob("*.png"))) == min(8, len(images))

    result = run_script("submission.py", "--raw", raw, "--workdir", work, "--truth",
                        raw / "test_masks")
    ids = np.load(work / "imgs_id_test.npy")
    rows = read_submission(work / "submission.csv", masks.shape[1:], ids)
    for i, mask in zip(ids, masks):
        assert np.array_equal(rle_decode(rows[int(i)], mask.shape), mask)
    score = float(result.stdout.split("local score (mean Dice):")[1].split()[0])
    assert 0 <= score <= 1


def test_tutorial_preset_is_the_2017_recipe(demo):
    import train

    args = train.get_args(["--preset", "tutorial", "--epochs", "1"])
    assert args.image_size == [96, 96] and args.width == 32 and args.depth == 4
    assert (args.loss, args.lr, args.batch_size, args.batchnorm, args.augment) == ("dice", 1e-5, 32,
                                                                                   False, False)
    assert args.epochs == 1  # explicit flags win over the preset


def test_two_replicas_with_mirrored_strategy(demo, tmp_path):
    """--gpus 2 on a CPU-only machine splits the CPU into two logical devices; the two replicas
    train one model: its loss falls, its weights leave their start, predict.py reads it."""
    import shutil

    import keras
    import pandas as pd

    from kit import model

    raw, work = demo
    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("model", "preview", "*.csv"))
    result = run_script("train.py", "--workdir", copy, "--gpus", 2, "--epochs", 4, "--folds", 3,
                        "--width", 4, "--depth", 2, "--image-size", 32, 48, "--batch-size", 8,
                        "--no-augment", "--lr", 3e-3, "--seed", 3)
    assert "2 replica(s)" in result.stdout
    loss = pd.read_csv(copy / "model" / "history_fold0.csv")["loss"]
    assert len(loss) == 4 and loss.iloc[-1] < loss.iloc[0]
    trained = keras.models.load_model(copy / "model" / "fold0.keras", compile=False)
    keras.utils.set_random_seed(3)  # as train_fold seeds fold 0 of --seed 3
    start = model.build_unet((32, 48), 1, 1, 4, 2)
    kernels = [(a, b) for a, b in zip(trained.weights, start.weights) if "kernel" in a.path]
    assert kernels and all(not np.allclose(a, b) for a, b in kernels)
    run_script("predict.py", "--workdir", copy, "-q")
    masks, test = np.load(copy / "imgs_mask_test.npy"), np.load(copy / "imgs_test.npy")
    assert masks.shape == test.shape[:3] and set(np.unique(masks)) <= {0, 1}


def test_preset_defaults_give_way_to_any_spelling_of_a_flag(demo):
    import train

    args = train.get_args(["--preset", "tutorial", "--lr=1e-3", "--batch",
                           "8"])  # = and abbreviated
    assert (args.lr, args.batch_size, args.width) == (1e-3, 8, 32)


def test_local_score_decodes_in_the_csv_own_convention(trained_demo, tmp_path):
    """--truth reads the CSV back with --rle-order and --rle-start: the same masks score the
    same."""
    raw, work, _ = trained_demo
    scores = []
    for flags in ([], ["--rle-order", "C"], ["--rle-start",
                                             "0"], ["--rle-order", "C", "--rle-start", "0"]):
        result = run_script("submission.py", "--raw", raw, "--workdir", work, "--truth",
                            raw / "test_masks", "--output", tmp_path / "s.csv", *flags)
        scores.append(float(result.stdout.split("local score (mean Dice):")[1].split()[0]))
    assert len(set(scores)) == 1, scores


def test_validation_dice_is_reported_untuned_beside_tuned(trained_demo):
    """The tuned score is measured on the frames it was tuned on: the untuned one is kept beside
    it."""
    from kit import inference, metrics

    raw, work, stdout = trained_demo
    config = json.loads((work / "model" / "config.json").read_text())
    oof = np.load(work / "model" / "oof.npz")
    truth = np.load(work / "imgs_mask_train.npy")[oof["index"]]
    pred = inference.final_masks(oof["probs"].astype(np.float32), truth.shape[1:], 0.5, 0)
    assert (abs(config["validation_dice_untuned"] - metrics.mean_dice(pred, truth))
            < 0.005)  # oof: float16
    assert (config["validation_dice"]
            >= config["validation_dice_untuned"] - 1e-9)  # tuned on these frames
    assert f"validation Dice {config['validation_dice_untuned']:.4f} at threshold 0.5" in stdout
