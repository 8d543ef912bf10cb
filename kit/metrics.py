"""The competition's score, Dice, and IoU: per image, 1 where both masks are empty.

The formulas take an array module (`xp`: numpy here, keras.ops in the model's metric), so the
score the model reports while training is the score computed here, formula for formula."""

import numpy as np


def dice_from_counts(inter, total, xp=np):
    """2|A∩B| / (|A| + |B|), with total = |A| + |B|; 1 where both masks are empty."""
    return xp.where(total == 0, 1.0, 2.0 * inter / xp.maximum(total, 1))


def iou_from_counts(inter, union, xp=np):
    return xp.where(union == 0, 1.0, inter / xp.maximum(union, 1))


def flat_bool(masks):
    return np.asarray(masks, bool).reshape(len(masks), -1)


def dice_per_image(pred, truth):
    pred, truth = flat_bool(pred), flat_bool(truth)
    inter = np.count_nonzero(pred & truth, axis=1)
    return dice_from_counts(inter, np.count_nonzero(pred, axis=1) + np.count_nonzero(truth, axis=1))


def iou_per_image(pred, truth):
    pred, truth = flat_bool(pred), flat_bool(truth)
    return iou_from_counts(np.count_nonzero(pred & truth, axis=1),
                           np.count_nonzero(pred | truth, axis=1))


def mean_dice(pred, truth):
    return float(dice_per_image(pred, truth).mean()) if len(pred) else float("nan")


def class_scores(pred, truth, classes):
    """{class: (mean Dice, mean IoU)} over images, for classes 1..classes of label masks."""
    return {
        c: (float(dice_per_image(pred == c, truth == c).mean()),
            float(iou_per_image(pred == c, truth == c).mean()))
        for c in range(1, classes + 1)
    }


def overall(scores):
    """The one number of per-class scores: mean Dice over the classes."""
    return float(np.mean([d for d, _ in scores.values()]))


def format_class_scores(scores):
    lines = [f"  class {c}: Dice {d:.4f}  IoU {j:.4f}" for c, (d, j) in scores.items()]
    dice, iou = np.mean([d for d, _ in scores.values()]), np.mean([j for _, j in scores.values()])
    return "\n".join(lines + [f"  mean:    Dice {dice:.4f}  IoU {iou:.4f}"])
