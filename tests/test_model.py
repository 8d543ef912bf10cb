"""The U-Net at several sizes, its losses, and a few real training steps."""

import numpy as np
import pytest

from kit import augment, model as unet


@pytest.mark.parametrize("size, depth", [((32, 48), 4), ((64, 64), 4), ((96, 128), 5),
                                         ((16, 16), 2)])
def test_output_matches_input_size(size, depth):
    net = unet.build_unet(size, width=4, depth=depth)
    x = np.random.default_rng(0).uniform(0, 255, (2, *size, 1)).astype("float32")
    y = np.asarray(net.predict_on_batch(x))
    assert y.shape == (2, *size, 1)
    assert y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1


def test_normalisation_statistics_travel_with_the_model(tmp_path):
    import keras

    net = unet.build_unet((16, 16), width=4, depth=2, mean=100.0, std=20.0)
    net.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    x = np.full((1, 16, 16, 1), 120.0, "float32")
    norm = keras.Model(loaded.input, loaded.layers[1].output)
    assert np.allclose(np.asarray(norm(x)), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(unet.BINARY_LOSSES))
def test_losses_are_lowest_for_a_perfect_prediction(name):
    loss = unet.BINARY_LOSSES[name]
    truth = np.zeros((2, 8, 8, 1), "float32")
    truth[0, 2:5, 2:6] = 1
    perfect = float(loss(truth, np.clip(truth, 1e-4, 1 - 1e-4)))
    wrong = float(loss(truth, 1 - truth))
    half = float(loss(truth, np.full_like(truth, 0.5)))
    assert perfect < half < wrong


@pytest.mark.slow  # 48 training steps
def test_a_few_steps_learn_a_bright_square():
    import keras

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 100, (32, 32, 32, 1)).astype("float32")
    y = np.zeros_like(x)
    for i in range(32):
        r, c = rng.integers(4, 20, 2)
        y[i, r:r + 8, c:c + 8] = 1
    x = x + 150 * y
    keras.utils.set_random_seed(0)
    net = unet.build_unet((32, 32), width=8, depth=2, mean=float(x.mean()), std=float(x.std()))
    net.compile(keras.optimizers.Adam(3e-3), unet.bce_dice_loss, metrics=[unet.DiceScore()])
    before = net.evaluate(x, y, verbose=0, return_dict=True)
    net.fit(x, y, batch_size=8, epochs=12, verbose=0)
    after = net.evaluate(x, y, verbose=0, return_dict=True)
    assert after["loss"] < before["loss"] - 0.2
    assert after["dice"] > 0.8


def test_augmentation_moves_image_and_mask_together():
    import tensorflow as tf

    x = np.zeros((4, 32, 32, 1), "float32")
    x[:, 8:16, 4:12] = 200.0
    y = (x > 0).astype("float32")
    augmenter = augment.make_augmenter(seed=3)
    images, masks = augmenter(tf.constant(1), tf.constant(x), tf.constant(y))
    images, masks = np.asarray(images), np.asarray(masks)
    assert set(np.unique(masks)) <= {0.0, 1.0}  # masks stay binary
    assert not np.array_equal(masks, y)  # something moved
    for image, mask in zip(images, masks):
        inside, outside = image[mask > 0].mean(), image[mask == 0].mean()
        assert inside > outside + 100  # the square and its mask moved together


def test_elastic_warp_moves_image_and_mask_together_and_repeats_for_a_seed():
    import tensorflow as tf

    x = np.zeros((4, 48, 64, 1), "float32")
    x[:, 16:32, 20:44] = 200.0
    y = (x > 0).astype("float32")
    seed = tf.constant([5, 9], tf.int64)
    images, masks = (np.asarray(a)
                     for a in augment.elastic(tf.constant(x), tf.constant(y), seed, strength=0.05))
    again, _ = augment.elastic(tf.constant(x), tf.constant(y), seed, strength=0.05)
    assert np.array_equal(images, np.asarray(again))  # stateless: same seed, same warp
    assert set(np.unique(masks)) <= {0.0, 1.0} and not np.array_equal(masks, y)
    assert ((images > 100) == (masks > 0.5)).mean() > 0.995  # the square and its mask warp as one


def test_bf16_is_chosen_only_where_onednn_may_use_it(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 holds oneDNN to AVX2, which has no bf16 convolution: choosing
    mixed_bfloat16 there would fail at the first step."""
    from kit import training

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # as set by whoever runs the tests
    real_cpu = training.cpu_has_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not training.cpu_has_bf16()
    if not training.tf.config.list_physical_devices("GPU"):
        assert training.choose_precision("auto") == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert training.cpu_has_bf16() == real_cpu  # allowed: the CPU decides
