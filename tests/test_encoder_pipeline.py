"""train.py --encoder mobilenetv2 --encoder-weights FILE, then predict.py (whole images and tiles)
and submission.py, on the tiny demo competition."""

import json

import numpy as np
import pytest

from conftest import run_script
from test_encoder_training import TINY, copy_arrays, legacy_weights


def test_mobilenetv2_from_a_weights_file_to_a_submission(demo, tmp_path):
    import keras

    from kit import encoders

    raw, arrays = demo
    work, weights = tmp_path / "work", tmp_path / "mobilenet_v2_notop.h5"
    copy_arrays(arrays, work)
    source = legacy_weights(weights, keras.applications.MobileNetV2)
    # One epoch, all of it frozen: the backbone's weights must come out as the file holds them.
    run_script("train.py", "--raw", raw, "--workdir", work, "--encoder", "mobilenetv2",
               "--encoder-weights", weights, "--freeze-encoder-epochs", 1, "--epochs", 1,
               "--image-size", 64, 96, *TINY)
    config = json.loads((work / "model/config.json").read_text())
    assert config["recipe"]["encoder"] == "mobilenetv2"
    assert config["options"]["encoder_weights"] == str(weights)
    saved = keras.models.load_model(work / "model/fold0.keras", compile=False, safe_mode=True)
    assert saved.input_shape[1:3] == (64, 96)
    encoder = encoders.encoder_of(saved)
    assert all(map(np.array_equal, encoder.get_weights(), source.get_weights()))

    run_script("predict.py", "--raw", raw, "--workdir", work, "-q")
    masks = np.load(work / "imgs_mask_test.npy")
    assert masks.shape == np.load(work / "imgs_test.npy").shape
    run_script("submission.py", "--raw", raw, "--workdir", work, "-q")
    assert (work / "submission.csv").exists()

    from kit import inference, model  # tiles: the stride is the encoder's, not 2^MaxPooling2D

    assert model.stride_of(saved) == encoders.STRIDE and model.depth_of(saved) == 0
    with pytest.raises(Exception, match="multiple of 32"):
        inference.tile_models([saved], 48, 0)
    tiled, overlap = inference.tile_models([saved], 64, 0)
    image = np.load(work / "imgs_test.npy")[0]
    probs = inference.tiled_probabilities(tiled, image, 64, overlap, 4, tta=False)
    assert probs.shape == image.shape and 0 <= probs.min() and probs.max() <= 1
