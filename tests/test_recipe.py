"""The recipe, the options and the plan (kit/recipe.py): checked before TensorFlow loads, frozen,
and spoken of in the user's words; the vocabulary agrees with what builds it."""

import ast
import dataclasses
import subprocess
import sys

import pytest

from conftest import ROOT
from kit import recipe
from kit.files import UserError
from kit.recipe import Options, Plan, Recipe


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--epochs", "-3"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "-1"], "--lr must be more than 0"),
    (["--time-limit", "-5"], "--time-limit must be at least 0"),
    (["--folds", "0"], "--folds must be at least 1"),
    (["--fold", "7"], "--fold 7: give a fold from 0 to 4, or 'all'"),
    (["--dropout", "1.5"], "--dropout 1.5: give a fraction from 0 to below 1"),
    (["--encoder", "mobilenetv2", "--encoder-weights", "absent.h5"],
     "--encoder-weights absent.h5 does not exist: give the no-top ImageNet weights of "
     "mobilenetv2 (keras.applications file name mobilenet_v2_weights_tf_dim_ordering_tf_kernels"),
    (["--weights", "absent.weights.h5"], "--weights absent.weights.h5 not found"),
    (["--encoder-weights", "imagenet"], "--encoder-weights is for a pretrained encoder"),
])
def test_a_bad_option_is_one_line_before_tensorflow_loads(tmp_path, flags, message):
    """In-process, so that the modules loaded can be looked at: no TensorFlow, no workdir."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import train\n"
            f"try:\n    train.cli.run(lambda: train.main({flags + ['--workdir', 'w']!r}))\n"
            f"finally:\n    print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}")
    assert result.stdout.strip() == "False"  # answered before the framework loaded
    assert not (tmp_path / "w").exists()


def test_help_says_what_each_default_does_and_is_quick():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "-h"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag in ("--no-batchnorm", "--no-augment", "--no-tune", "--no-tta"):
        line = text.split(flag, 2)[2].split(" --", 1)[0]  # the option's own help
        assert "(default: True)" not in line and "(default:" in line, (flag, line)
    assert "(default: 16)" in text  # plain defaults still shown


def test_train_py_never_assigns_to_its_parsed_options():
    tree = ast.parse((ROOT / "train.py").read_text())
    assigned = [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and any(
            isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "args"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))
    ]
    assert not assigned
    assert len((ROOT / "train.py").read_text().splitlines()) <= 300


def test_the_recipe_and_plan_are_frozen_and_the_image_size_a_tuple():
    r = Recipe(image_size=[96, 128])
    assert r.image_size == (96, 128)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lr = 1.0
    plan = Plan(size=(32, 48), classes=1, channels=1, loss="dice", class_weights=None,
                precision="float32", folds=(0,), epochs=None, patience=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.epochs = 3
    assert Plan.from_dict({**plan.to_dict(), "size": [32, 48], "folds": [0]}) == plan


def test_stride_and_frozen_epochs_are_decided_once():
    assert Recipe(depth=3).stride() == 8 and Recipe(encoder="resnet50").stride() == 32
    plan = dict(size=(32, 32), classes=1, channels=1, loss="dice", class_weights=None,
                precision="float32", folds=(0,), patience=None)
    warm = Recipe(encoder="mobilenetv2", freeze_encoder_epochs=5)
    assert Plan(**plan, epochs=3).frozen_epochs(warm) == 3  # the cap comes first
    assert Plan(**plan, epochs=None).frozen_epochs(warm) == 5
    with pytest.raises(UserError, match="--freeze-encoder-epochs is for a pretrained encoder"):
        Recipe(freeze_encoder_epochs=2)


def test_named_folds():
    assert Options().named_folds(5) is None  # the budget decides
    assert Options(fold="all").named_folds(3) == (0, 1, 2)
    assert Options(fold="2").named_folds(3) == (2,)
    with pytest.raises(UserError, match="--fold x: give a fold from 0 to 2"):
        Options(fold="x").named_folds(3)


def test_loss_names_follow_the_masks():
    assert recipe.loss_name("bce_dice", 1) == "bce_dice"
    assert recipe.loss_name("bce_dice", 3) == "cce_dice"
    assert recipe.loss_name("weighted_cce", 3) == "weighted_cce"


def test_the_vocabulary_is_what_the_model_builds():
    from kit import encoders, model

    assert list(recipe.BINARY_LOSSES) == list(model.BINARY_LOSSES)
    assert list(recipe.CATEGORICAL_LOSSES) == list(model.CATEGORICAL_LOSSES)
    assert set(recipe.CATEGORICAL_TWIN.values()) <= set(model.CATEGORICAL_LOSSES)
    assert list(recipe.ENCODERS) == list(encoders.ENCODERS)
    assert encoders.STRIDE == recipe.ENCODER_STRIDE
    weighted = model.loss_for("weighted_cce", 2, [0.5, 1.0, 2.0])  # no placeholder: a loss
    assert callable(weighted) and weighted.__name__ == "weighted_cce_loss"
