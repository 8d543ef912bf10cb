"""The Lovász and BCE + Dice + focal losses: their minimum, their order, their gradients, a
NumPy reference of the Lovász hinge, and a few training steps with each."""

import numpy as np
import pytest

from kit import model as unet
from kit import recipe

NEW_BINARY = ("lovasz", "bce_dice_focal")


def lovasz_grad(gt_sorted):
    """The reference's lovasz_grad (Berman et al., lovasz_losses.py), in NumPy."""
    gts = gt_sorted.sum()
    intersection = gts - np.cumsum(gt_sorted)
    union = gts + np.cumsum(1 - gt_sorted)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_hinge_flat(logits, labels):
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    perm = np.argsort(-errors, kind="stable")
    return np.dot(np.maximum(errors[perm], 0), lovasz_grad(labels[perm]))


def reference_hinge(labels, logits):  # per_image=True
    return np.mean([lovasz_hinge_flat(lg.ravel(), lb.ravel()) for lg, lb in zip(logits, labels)])


def reference_softmax(labels, probas):  # per_image=False, classes="present"
    labels, probas = labels.reshape(-1, labels.shape[-1]), probas.reshape(-1, probas.shape[-1])
    losses = []
    for c in range(labels.shape[-1]):
        fg = labels[:, c]
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - probas[:, c])
        perm = np.argsort(-errors, kind="stable")
        losses.append(np.dot(errors[perm], lovasz_grad(fg[perm])))
    return np.mean(losses)


def masks(rng, shape=(4, 12, 10, 1)):
    truth = (rng.uniform(size=shape) < 0.3).astype("float64")
    truth[1] = 0  # an image without foreground
    return truth


def test_the_recipe_names_the_new_losses():
    for name in NEW_BINARY:
        assert name in recipe.BINARY_LOSSES and name in unet.BINARY_LOSSES
    assert recipe.CATEGORICAL_TWIN["lovasz"] == "lovasz_softmax"
    assert unet.loss_for("lovasz", 3) is unet.lovasz_softmax_loss


@pytest.mark.parametrize("seed", range(5))
def test_the_lovasz_hinge_agrees_with_the_reference(seed):
    rng = np.random.default_rng(seed)
    truth = masks(rng)
    logits = rng.normal(0, 2, truth.shape)
    ours = float(unet.lovasz_hinge(truth.astype("float32"), logits.astype("float32")))
    assert ours == pytest.approx(reference_hinge(truth, logits), abs=1e-5)
    # and through the model's probabilities, by way of the clipped logit
    probs = (1 / (1 + np.exp(-logits))).astype("float32")
    through = float(unet.lovasz_loss(truth.astype("float32"), probs))
    assert through == pytest.approx(reference_hinge(truth, logits), abs=1e-4)


def test_an_image_without_foreground_costs_its_worst_false_alarm():
    truth = np.zeros((2, 4, 4, 1), "float32")
    truth[0, :2] = 1
    logits = np.where(truth > 0, -1.0, -3.0).astype("float32")
    logits[1, 2, 3] = 0.5
    alone = float(unet.lovasz_hinge(truth[:1], logits[:1]))
    assert float(unet.lovasz_hinge(truth[1:], logits[1:])) == pytest.approx(1.5)
    assert float(unet.lovasz_hinge(truth, logits)) == pytest.approx((alone + 1.5) / 2)
    assert float(unet.lovasz_hinge(truth[1:], np.full_like(truth[1:], -2.0))) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_the_lovasz_softmax_agrees_with_the_reference(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (3, 8, 6))
    labels[labels == 2] = 3  # class 2 is absent
    truth = np.eye(4)[labels]
    scores = rng.normal(0, 1, truth.shape)
    probas = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    ours = float(unet.lovasz_softmax_loss(truth.astype("float32"), probas.astype("float32")))
    assert ours == pytest.approx(reference_softmax(truth, probas), abs=1e-5)


@pytest.mark.parametrize("name", NEW_BINARY)
def test_a_perfect_prediction_is_the_minimum_and_a_worse_one_costs_more(name):
    loss = unet.BINARY_LOSSES[name]
    truth = masks(np.random.default_rng(0)).astype("float32")
    perfect = float(loss(truth, np.clip(truth, 1e-7, 1 - 1e-7)))
    slightly = float(loss(truth, np.clip(truth, 0.35, 0.65)))
    half = float(loss(truth, np.full_like(truth, 0.5)))
    wrong = float(loss(truth, 1 - truth))
    assert perfect < slightly < half < wrong
    assert perfect == pytest.approx(0.0, abs=1e-3 if name == "bce_dice_focal" else 0)


def test_a_perfect_label_prediction_is_zero_for_the_lovasz_softmax():
    truth = np.eye(3, dtype="float32")[np.random.default_rng(0).integers(0, 3, (2, 6, 6))]
    loss = unet.lovasz_softmax_loss
    assert float(loss(truth, truth)) == 0.0
    worse, worst = np.full_like(truth, 1 / 3), (1 - truth) / 2
    assert 0 < float(loss(truth, worse)) < float(loss(truth, worst))


@pytest.mark.parametrize("name, classes", [("lovasz", 1), ("bce_dice_focal", 1), ("lovasz", 3)])
def test_the_gradients_are_finite(name, classes):
    import tensorflow as tf

    rng = np.random.default_rng(1)
    if classes == 1:
        truth = masks(rng)
        pred = rng.uniform(0, 1, truth.shape)
        pred[0, 0], pred[0, 1] = 0.0, 1.0  # saturated, beyond the clip
    else:
        truth = np.eye(classes)[rng.integers(0, classes, (2, 6, 6))]
        pred = rng.dirichlet(np.ones(classes), (2, 6, 6))
    pred = tf.Variable(pred.astype("float32"))
    with tf.GradientTape() as tape:
        value = unet.loss_for(name, classes)(tf.constant(truth, "float32"), pred)
    grad = tape.gradient(value, pred).numpy()
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


@pytest.mark.parametrize("name, classes", [("lovasz", 1), ("bce_dice_focal", 1), ("lovasz", 3)])
def test_a_model_takes_two_steps_with_each_new_loss(name, classes):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 16, 16, 1)).astype("float32")
    if classes == 1:
        y = (x > 128).astype("float32")
    else:
        y = np.eye(classes + 1, dtype="float32")[(x[..., 0] // 64).astype(int)]
    net = unet.build_unet((16, 16), classes=classes, width=4, depth=2)
    net.compile(keras.optimizers.Adam(1e-3), unet.loss_for(name, classes))
    losses = [float(np.asarray(net.train_on_batch(x, y)).ravel()[0]) for _ in range(2)]
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("name, classes", [("lovasz", 1), ("bce_dice_focal", 1), ("lovasz", 3)])
def test_half_precision_inputs_give_a_float32_loss(name, classes):
    """Under mixed precision the masks and predictions may come as float16 or bfloat16: the
    losses compute in float32, as the others in kit/model.py do."""
    from keras import ops

    rng = np.random.default_rng(2)
    if classes == 1:
        truth, pred = masks(rng), rng.uniform(0, 1, (4, 12, 10, 1))
    else:
        truth = np.eye(classes)[rng.integers(0, classes, (2, 6, 6))]
        pred = rng.dirichlet(np.ones(classes), (2, 6, 6))
    loss = unet.loss_for(name, classes)
    full = float(loss(truth.astype("float32"), pred.astype("float32")))
    for dtype in ("float16", "bfloat16"):
        value = loss(ops.cast(truth, dtype), ops.cast(pred, dtype))
        assert value.dtype == "float32" and float(value) == pytest.approx(full, rel=0.05)
