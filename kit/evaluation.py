"""Out of fold: each fold's validation frames predicted by its saved model, the threshold,
minimum area and presence threshold tuned on those predictions, the scores, and what the run
leaves for predict.py, the report and visualize.py (config.json, oof.npz, validation.csv,
tuning.csv, curves.png), committed with the folds' models and histories as one set: the model
folder holds the old run's or the whole of this one's (files.OutputSet)."""

import dataclasses
import logging

import numpy as np

from kit import config, figures, inference, metrics, model
from kit.cli import import_tensorflow

import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import keras  # noqa: E402

log = logging.getLogger(__name__)


@dataclasses.dataclass
class OutOfFold:
    """The run's out-of-fold predictions, fold after fold: probabilities, presence (None
    without --gate), the frames they belong to; and each fold's seconds of training."""

    fold_of: np.ndarray  # each training frame's fold
    probs: list = dataclasses.field(default_factory=list)
    presence: list = dataclasses.field(default_factory=list)
    index: list = dataclasses.field(default_factory=list)
    seconds: list = dataclasses.field(default_factory=list)

    def add(self, validation, probs, presence):
        self.probs.append(probs)
        self.presence.append(presence)
        self.index.append(np.flatnonzero(validation))

    def joined(self):
        """(probabilities, presence or None, frame index) of every fold, in one array each."""
        gated = all(q is not None for q in self.presence)
        return (np.concatenate(self.probs), np.concatenate(self.presence) if gated else None,
                np.concatenate(self.index))


def out_of_fold(run, fold, images, sizes, mixed):
    """(probabilities, presence) (see inference.forward) of a fold's validation images by its
    saved file, loaded outside any distribution strategy exactly as predict.py will load it."""
    r, o = run.recipe, run.options
    saved = keras.models.load_model(run.fold_model(fold), compile=False)
    if not r.patch:
        return inference.probabilities([saved], images, r.batch_size * 4, o.tta, o.quiet,
                                       sizes=sizes if mixed else None)
    channels = model.mask_shape(saved)[-1]
    out = np.zeros((*images.shape[:3], *([channels] if channels > 1 else [])), np.float32)
    for i, (h, w) in enumerate(sizes):  # on the canvas, as the images lie
        out[i, :h, :w] = inference.tiled_probabilities([saved], images[i, :h, :w], r.patch,
                                                       r.patch // 4, r.batch_size, o.tta)
    return out, None


def scored(probs, truth, working_truth, pixel_area, place, presence, classes, tune):
    """Scores of out-of-fold probabilities: untuned (threshold 0.5, no minimum area, no presence
    gate) and with the post-processing tuned on these same predictions (optimistic).
    Returns (post-processing: final_masks' threshold, min_area and presence_threshold, tuning
    grid, final masks, tuned scores, untuned score)."""

    def scores_at(post):
        pred = inference.final_masks(probs, truth.shape[1:3], **post, sizes=place,
                                     presence=presence)
        return pred, metrics.class_scores(pred, truth, classes)

    post, grid = dict(threshold=0.5, min_area=0, presence_threshold=0.0), []
    _, untuned = scores_at(post)
    if tune and classes == 1:
        post = inference.tune_postprocessing(probs, working_truth, pixel_area, grid, presence)
    pred, tuned = scores_at(post)
    return post, grid, pred, tuned, metrics.overall(untuned)


def evaluate(run, oof, frames, working, out):
    """Tune and score the out-of-fold predictions, and record them for the report (staged in
    `out`, the files.OutputSet of the model folder): (post-processing, tuned scores, untuned
    score)."""
    r, p = run.recipe, run.plan
    probs, presence, index = oof.joined()
    truth = frames.masks[index]
    original = np.prod(np.median(frames.sizes, axis=0)) / np.prod(p.size)
    pixel_area = 1.0 if r.patch else float(original)
    # Tiled probabilities lie on the canvas already; whole-image ones go back to each own size.
    place = frames.sizes[index] if frames.mixed and not r.patch else None
    post, grid, pred, scores, untuned = scored(probs, truth, truth if r.patch else
                                               working.y[index], pixel_area, place, presence,
                                               p.classes, run.options.tune)
    gate = {} if presence is None else {"presence": presence}
    np.savez(out.stage(run.model_dir / "oof.npz"), index=index, probs=probs.astype(np.float16),
             **gate)  # for stacking, ensembling, tuning
    table = {
        "index": index,
        "subject": frames.subjects[index],
        "fold": oof.fold_of[index],
        "truth_area": truth.reshape(len(truth), -1).sum(1),
        "pred_area": pred.reshape(len(pred), -1).sum(1),
        "dice": metrics.dice_per_image(pred, truth)
    }
    save_records(run, out, table, grid)
    return post, scores, untuned


def save_records(run, out, frames, grid):
    """What the report and visualize.py show, staged in `out`: each validation frame's Dice
    (frames: a table), the tuning grid, and the curves of every fold of this run."""
    import pandas as pd

    tuning = pd.DataFrame(grid, columns=["threshold", "min_area", "presence_threshold", "dice"])
    for name, table in (("validation.csv", pd.DataFrame(frames)), ("tuning.csv", tuning)):
        table.to_csv(out.stage(run.model_dir / name), index=False)
    histories = [run.history(f) for f in run.plan.folds]
    figures.curves_figure(histories).savefig(out.stage(run.model_dir / "curves.png"),
                                             format="png")


def save_config(run, frames, working, result, seconds, out):
    """config.json, which predict.py reads (the folds, the tuned post-processing, the working
    size's scale, the scores, the training data's fingerprint, the recipe, options and plan),
    staged in `out` with the folds' models and histories; the backups go at the commit (the run
    is complete: nothing left to resume)."""
    post, scores, untuned = result
    r, p = run.recipe, run.plan
    class_scores = {c: {"dice": d, "iou": j} for c, (d, j) in scores.items()}
    saved = config.Config(
        folds=[f"fold{n}.keras" for n in p.folds], **post, tta=run.options.tta,
        scale=working.scale, tile=r.patch, original_size=list(frames.images.shape[1:3]),
        validation_dice=metrics.overall(scores), validation_dice_untuned=untuned,
        class_scores=class_scores, precision=p.precision, data=run.data, seconds=seconds,
        recipe=dataclasses.asdict(r), options=dataclasses.asdict(run.options), plan=p.to_dict())
    out.stage(run.model_dir / config.NAME).write_text(config.to_json(saved))
    for fold in p.folds:
        for staged in (run.fold_model(fold), run.history(fold)):
            out.adopt(staged, run.model_dir / staged.name)
        out.remove(run.backup(fold))
    log.info(f"per-class scores on validation images (mean over images):\n"
             f"{metrics.format_class_scores(scores)}")
    gate = f", presence threshold {post['presence_threshold']:.1f}" if r.gate else ""
    log.info(f"validation Dice {untuned:.4f} at threshold 0.5; {metrics.overall(scores):.4f} with "
             f"threshold {post['threshold']:.2f}, minimum area {post['min_area']} px{gate} tuned "
             f"on these same frames")
