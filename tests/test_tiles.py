"""Large images: tiles blended without seams, tiled against whole-image predictions, patches
in training and tiles in prediction end to end. (Memory on a 6000x4000 image: bench/tiles.py.)"""

import json

import cv2
import numpy as np
import pytest

from kit import model as unet
from kit import inference as predict
from conftest import run_script
from folder_sets import write_pairs


class Constant:
    """A stand-in model whose every output pixel is 1: what comes back is the sum of the weights."""

    output_shape = (None, None, None, 1)
    input_shape = (None, 32, 32, 1)

    def predict_on_batch(self, x):
        return np.ones((*x.shape[:3], 1), np.float32)


@pytest.mark.parametrize("h, w, tile, overlap", [(100, 130, 32, 8), (64, 64, 64, 16),
                                                 (5, 300, 48, 12), (31, 33, 16, 0),
                                                 (200, 90, 96, 47)])
def test_blending_weights_add_up_to_one_everywhere(h, w, tile, overlap):
    image = np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)
    out = predict.tiled_probabilities([Constant()], image, tile, overlap, per_pass=7, tta=False)
    assert out.shape == (h, w)
    assert np.allclose(out, 1.0, atol=1e-5)


def sharp_unet(classes):
    """A random U-Net with its last layer scaled up, so that its outputs vary between 0 and 1."""
    import keras

    keras.utils.set_random_seed(0)
    net = unet.build_unet((64, 64), 1, classes, 8, 3, 0.0, True, 128.0, 40.0)
    kernel, bias = net.layers[-1].get_weights()
    net.layers[-1].set_weights([kernel * 300, bias])
    return net


def textured(h, w, seed=0):
    image = cv2.GaussianBlur(
        np.random.default_rng(seed).uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 4)
    return np.clip((image - image.mean()) * 8 + 128, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("classes", [1, 3])
def test_tiles_match_the_whole_image_away_from_its_borders(classes):
    net = sharp_unet(classes)
    image = textured(192, 256)
    whole = predict.forward([predict.fully_convolutional(net)], image[None], tta=False)[0][0]
    assert whole.std() > 0.2  # a prediction worth comparing
    models, overlap = predict.tile_models([net], 96, 32)
    tiled = predict.tiled_probabilities(models, image, 96, overlap, per_pass=4, tta=True)
    whole_tta = predict.forward([predict.fully_convolutional(net)], image[None], tta=True)[0][0]
    # The borders differ by design: mirrored context for tiles, zero padding for the whole image.
    inner = np.abs(tiled - whole_tta)[16:-16, 16:-16]
    assert inner.mean() < 0.005 and inner.max() < 0.1
    naive = predict.tiled_probabilities(
        predict.tile_models([net], 96, 1)[0], image, 96, 0, per_pass=4, tta=True)
    assert (np.abs(naive - whole_tta)[16:-16, 16:-16].mean()
            > 5 * inner.mean())  # seams, had we not blended


def test_tiles_at_the_training_scale_come_back_at_the_original_size():
    from kit.config import Config

    config = Config(folds=["fold0.keras"], scale=[0.5, 0.5], tta=False)
    models, overlap = predict.tile_models([sharp_unet(1)], 64, 16)
    mask = predict.predict_by_tiles(models, textured(300, 410), (300, 410), config, 64, overlap,
                                    per_pass=8)
    assert mask.shape == (300, 410) and mask.dtype == np.uint8 and 0 < mask.mean() < 1


def test_bad_tiles_are_one_line_errors():
    from kit.files import UserError

    with pytest.raises(UserError, match="multiple of 8"):
        predict.tile_models([sharp_unet(1)], 100, 16)
    with pytest.raises(UserError, match="less than half"):
        predict.tile_models([sharp_unet(1)], 64, 32)


@pytest.mark.slow
def test_patches_in_training_and_tiles_in_prediction(tmp_path):
    """Training images of mixed sizes cut into patches; test images larger than a patch, predicted
    by tiles."""
    write_pairs(tmp_path / "img", tmp_path / "msk", [(96, 128), (80, 80), (128, 96)] * 4)
    write_pairs(tmp_path / "test", tmp_path / "test_msk", [(150, 260), (70, 90)], seed=3)
    work = tmp_path / "work"
    run_script("data.py", "--images", tmp_path / "img", "--masks", tmp_path / "msk",
               "--test-images", tmp_path / "test", "--test-masks", tmp_path / "test_msk",
               "--workdir", work, "-q")
    result = run_script("train.py", "--workdir", work, "--patch", 48, "--epochs", 3, "--width", 8,
                        "--depth", 2, "--folds", 3, "--batch-size", 8)
    assert "patches 48x48" in result.stdout and "class 1: Dice" in result.stdout
    config = json.loads((work / "model" / "config.json").read_text())
    assert config["tile"] == 48 and config["scale"] == [1.0, 1.0]

    run_script("predict.py", "--workdir", work, "-q")  # tiles of the patch size, by default
    default = np.load(work / "imgs_mask_test.npy")
    assert (default.shape == (2, 150, 260) and not default[1, 70:].any() and
            not default[1, :, 90:].any())
    run_script("predict.py", "--workdir", work, "-q", "--tile", 96, "--overlap", 24)
    larger = np.load(work / "imgs_mask_test.npy")
    assert (larger == default).mean() > 0.97  # the tile size barely matters
    result = run_script("submission.py", "--workdir", work)
    assert "class 1: Dice" in result.stdout


def test_patch_batches_never_repeat_their_augmentation_from_one_epoch_to_the_next():
    """Each batch of --patch training is augmented from its own step number: with one image the
    size of the patch, every batch holds the same pixels before augmentation, so equal batches
    would mean equal flips and elastic fields."""
    from kit import dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (1, 32, 32), dtype=np.uint8)
    masks = (images > 128).astype(np.uint8)
    steps = dataset.patches_per_epoch(np.array([[32, 32]]), 32, 4) // 4
    stream = dataset.random_patches(images, masks, np.array([[32, 32]]), 32, 4, 0, 1)
    batches = [x.numpy() for x, _ in stream.take(3 * steps)]
    assert steps == 1 and len(batches) == 3  # an epoch of one batch: batch 0 of every epoch
    assert not np.allclose(batches[0], batches[1]) and not np.allclose(batches[1], batches[2])
