"""U-Nets on keras.applications backbones: weights files, preprocessing, shapes, saving, freezing.

No test downloads anything: the weights files are random backbones saved the way keras.applications'
downloaded no-top files are laid out (legacy HDF5) and the way Keras 3 saves weights (.weights.h5).
"""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from kit import encoders
from kit.model import encoder_unet
from kit.recipe import ENCODERS

SIZE = (64, 96)


def random_pixels(channels, size=SIZE, n=2):
    return np.random.default_rng(0).uniform(0, 255, (n, *size, channels)).astype("float32")


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """name -> (source backbone, legacy .h5 path, .weights.h5 path), made on first use."""
    made = {}

    def make(name):
        if name not in made:
            source = encoders.ENCODERS[name].constructor(include_top=False, weights=None,
                                                         input_shape=(32, 32, 3))
            # Every value unlike a fresh layer's (BatchNorm's 0 and 1 included), and positive
            # because some are variances.
            rng = np.random.default_rng(1)
            source.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype)
                                for w in source.get_weights()])
            base = tmp_path_factory.mktemp(name)
            with h5py.File(base / f"{name}_notop.h5", "w") as f:
                # The layout of Keras 2's save_weights, which the downloaded files have.
                legacy_h5_format.save_weights_to_hdf5_group(f, source)
            source.save_weights(base / f"{name}.weights.h5")
            made[name] = source, base / f"{name}_notop.h5", base / f"{name}.weights.h5"
        return made[name]

    return make


def legacy_file_weights(path):
    """layer name -> its arrays, read from a legacy weights file without Keras."""
    def text(names):   # h5py gives bytes or str, depending on how they were written
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    with h5py.File(path, "r") as f:
        found = {}
        for name in text(f.attrs["layer_names"]):
            arrays = [np.asarray(f[name][w]) for w in text(f[name].attrs["weight_names"])]
            if arrays:
                found[name] = arrays
        return found


def assert_strides(model, size=SIZE):
    """The encoder's outputs: skips at strides 2, 4, 8, 16 and the bottleneck at 32."""
    shapes = [tuple(t.shape[1:3]) for t in encoders.encoder_of(model).outputs]
    assert shapes == [(size[0] // s, size[1] // s) for s in (2, 4, 8, 16, 32)]


@pytest.mark.parametrize("name, kind, channels", [
    ("mobilenetv2", "legacy", 1), ("mobilenetv2", "legacy", 3),
    ("mobilenetv2", "keras3", 1), ("mobilenetv2", "keras3", 3),
    ("efficientnetv2b0", "legacy", 1), ("efficientnetv2b0", "keras3", 3)])
def test_every_encoder_weight_comes_from_the_file(weights_files, name, kind, channels):
    source, legacy, keras3 = weights_files(name)
    model = encoder_unet(name, SIZE, channels, weights=legacy if kind == "legacy" else keras3)
    assert_strides(model)
    encoder = encoders.encoder_of(model)
    with_weights = {layer.name: layer.get_weights() for layer in encoder.layers if layer.weights}
    assert sum(map(len, with_weights.values())) == len(source.weights)
    for layer_name, arrays in with_weights.items():
        expected = source.get_layer(layer_name).get_weights()
        assert all(map(np.array_equal, arrays, expected)), layer_name
    if kind == "legacy":
        in_file = legacy_file_weights(legacy)
        assert in_file.keys() == with_weights.keys()
        for layer_name, arrays in in_file.items():
            assert all(map(np.array_equal, with_weights[layer_name], arrays)), layer_name


def test_the_legacy_file_is_what_keras_applications_reads(weights_files):
    source, legacy, _ = weights_files("mobilenetv2")
    # keras.applications hands weights=FILE to model.load_weights, as it does its downloads.
    loaded = keras.applications.MobileNetV2(include_top=False, weights=str(legacy),
                                            input_shape=(32, 32, 3))
    assert all(map(np.array_equal, loaded.get_weights(), source.get_weights()))


def assert_one_line_naming(error, path, name):
    message = str(error.value)
    assert "\n" not in message and str(path) in message and name in message
    assert ENCODERS[name] in message


def test_a_missing_weights_file_is_one_clear_error(tmp_path):
    path = tmp_path / "absent_notop.h5"
    with pytest.raises(encoders.EncoderWeightsError) as error:
        encoder_unet("mobilenetv2", SIZE, weights=path)
    assert_one_line_naming(error, path, "mobilenetv2")
    assert "does not exist" in str(error.value)


@pytest.mark.parametrize("kind", ["legacy", "keras3", "not_hdf5"])
def test_a_weights_file_of_another_backbone_is_one_clear_error(weights_files, tmp_path, kind):
    _, legacy, keras3 = weights_files("efficientnetv2b0")
    path = {"legacy": legacy, "keras3": keras3, "not_hdf5": tmp_path / "notes.h5"}[kind]
    if kind == "not_hdf5":
        path.write_text("not weights")
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None,
                                              input_shape=(32, 32, 3))
    with pytest.raises(ValueError) as error:    # EncoderWeightsError is a ValueError
        encoders.load_encoder_weights(backbone, path, "mobilenetv2")
    assert isinstance(error.value, encoders.EncoderWeightsError)
    assert_one_line_naming(error, path, "mobilenetv2")
    assert "does not fit mobilenetv2" in str(error.value)


@pytest.mark.parametrize("channels, classes, outputs", [(1, 1, 1), (3, 2, 3)])
def test_output_size_and_save_load(tmp_path, channels, classes, outputs):
    model = encoder_unet("mobilenetv2", SIZE, channels, classes, width=8)
    x = random_pixels(channels)
    y = np.asarray(model.predict_on_batch(x))
    assert y.shape == (2, *SIZE, outputs) and y.dtype == np.float32
    if outputs > 1:
        np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(x)), y)


@pytest.mark.parametrize("name", sorted(encoders.ENCODERS))
@pytest.mark.parametrize("channels", [1, 3])
def test_preprocessing_is_the_backbones_own(name, channels):
    module = {"mobilenetv2": keras.applications.mobilenet_v2,
              "efficientnetv2b0": keras.applications.efficientnet_v2,
              "resnet50": keras.applications.resnet50}[name]
    x = random_pixels(channels, (8, 8))
    inputs = keras.Input((8, 8, channels))
    ours = np.asarray(keras.Model(inputs, encoders.preprocess(name, inputs))(x))
    rgb = np.repeat(x, 3, axis=-1) if channels == 1 else x
    np.testing.assert_allclose(ours, module.preprocess_input(rgb.copy()), rtol=1e-5, atol=1e-4)


def test_resnet50_label_masks():
    model = encoder_unet("resnet50", SIZE, 3, 3, width=4)
    assert_strides(model)
    y = np.asarray(model.predict_on_batch(random_pixels(3)))
    assert y.shape == (2, *SIZE, 4)
    np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-5)


def test_the_mask_layer_is_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = encoder_unet("mobilenetv2", (32, 32), width=4)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("decoder1_conv1").compute_dtype == "float16"
    assert model.output.dtype == "float32"


def test_sizes_and_names_are_checked():
    with pytest.raises(ValueError, match="multiples of 32"):
        encoder_unet("mobilenetv2", (64, 90))
    with pytest.raises(ValueError, match="unknown encoder"):
        encoder_unet("vgg", (64, 64))


def test_a_frozen_encoder_stays_put_while_the_decoder_learns():
    keras.utils.set_random_seed(0)
    model = encoder_unet("mobilenetv2", (32, 32), width=4)
    encoder = encoders.encoder_of(model)
    x = random_pixels(1, (32, 32), 4)
    y = (x > 128).astype("float32")

    in_encoder = {id(w) for w in encoder.weights}

    def step():
        """One training step: (encoder, decoder) variables it changed."""
        before = [np.array(w) for w in model.weights]
        # A new optimizer each time, as after unfreezing: the old one knows only the decoder.
        # Eagerly, because tracing a training step of the backbone takes 20 s on 2 cores.
        model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", run_eagerly=True)
        model.train_on_batch(x, y)
        changed = [w for w, b in zip(model.weights, before) if not np.array_equal(w, b)]
        return ([w for w in changed if id(w) in in_encoder],
                [w for w in changed if id(w) not in in_encoder])

    encoders.freeze(model)
    assert not any(layer.trainable for layer in encoder.layers)
    encoder_changed, decoder_changed = step()
    # BatchNorm's moving statistics included: frozen layers run in inference mode.
    assert not encoder_changed and decoder_changed
    encoders.freeze(model, False)
    encoder_changed, decoder_changed = step()
    assert len(encoder_changed) == len(encoder.weights) and decoder_changed
