"""What the kit draws: training curves, the validation score frame by frame, the tuning of the
threshold and minimum area, image/truth/prediction sheets, and the preview PNGs."""

import re

import cv2
import numpy as np

from kit.files import UserError, atomic_path
from kit.metrics import dice_per_image

TRUTH, PREDICTION = "lime", "red"
LEGEND = ("green outline: truth, red outline: prediction; "
          "prediction panel: the model's probability, with the final mask outlined")


def figure(width=11, height=3.2):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def read_history(path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None


def kept_epoch(history):
    """Row of the epoch whose weights were kept: the best validation Dice among complete epochs
    (an epoch cut short by the time limit is logged but never kept)."""
    scores = history["val_dice"].to_numpy(float).copy()
    if "complete" in history:
        scores[history["complete"].to_numpy() == 0] = -np.inf
    return int(scores.argmax())


def curves_figure(histories):
    """Loss, Dice and learning rate per epoch; one colour per fold, validation solid, training
    dashed."""
    fig = figure()
    loss, dice, lr = fig.subplots(1, 3)
    for n, path in enumerate(histories):
        h = read_history(path)
        if h is None or not len(h):
            continue
        fold = re.search(r"fold(\d+)", str(path))
        name, color = f"fold {fold.group(1)}" if fold else path.stem, f"C{n}"
        epoch = h["epoch"] + 1
        for ax, key in ((loss, "loss"), (dice, "dice")):
            if key in h:
                ax.plot(epoch, h[key], "--", color=color, label=f"{name} training")
            if f"val_{key}" in h:
                ax.plot(epoch, h[f"val_{key}"], "-", color=color, marker=".",
                        label=f"{name} validation")
        if "val_dice" in h:
            best = kept_epoch(h)
            dice.plot(epoch[best], h["val_dice"][best], "*", color=color, markersize=12)
        if "learning_rate" in h:
            lr.plot(epoch, h["learning_rate"], color=color, label=name)
    for ax, title in ((loss, "loss"), (dice, "Dice (threshold 0.5; star: the epoch kept)"),
                      (lr, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if lr.lines:
        lr.set_yscale("log")
    return fig


def plot_curves(histories, png):
    """Write the training curves of the given history CSVs to png (atomically: never half a
    file)."""
    save(curves_figure(histories), png)


def save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def distribution_figure(table):
    """Histogram of the per-frame validation Dice (frames with a nerve / empty frames), and per
    subject."""
    fig = figure(height=3)
    hist, subjects = fig.subplots(1, 2, width_ratios=[1, 1.4])
    bins = np.linspace(0, 1, 21)
    has = table["truth_area"] > 0
    hist.hist([table["dice"][has], table["dice"][~has]], bins, stacked=True, color=["C0", "C7"],
              label=[f"with a mask ({has.sum()})", f"empty ({(~has).sum()})"])
    hist.set(title="Dice of each validation frame", xlabel="Dice", ylabel="frames")
    hist.legend(fontsize=8)
    by_subject = table.groupby("subject")["dice"].mean()
    subjects.bar(range(len(by_subject)), by_subject.to_numpy(), color="C0")
    subjects.set_xticks(range(len(by_subject)), [str(s) for s in by_subject.index], fontsize=7,
                        rotation=90 if len(by_subject) > 20 else 0)
    subjects.set(title="mean Dice per subject", xlabel="subject", ylim=(0, 1))
    for ax in (hist, subjects):
        ax.grid(alpha=0.3)
    return fig


def tuning_figure(tuning, threshold, min_area, presence_threshold=0.0):
    """The mean Dice of every threshold (at its best minimum area, and with none), and of every
    minimum area at the chosen threshold: where the saved values come from. With train.py --gate,
    at the chosen presence threshold, and the best of every threshold without the gate beside."""
    fig = figure()
    left, right = fig.subplots(1, 2)
    everything = tuning
    if "presence_threshold" in tuning:
        tuning = tuning[np.isclose(tuning["presence_threshold"], presence_threshold)]
    per_threshold = tuning.groupby("threshold")["dice"]
    left.plot(per_threshold.max().index,
              per_threshold.max().to_numpy(), marker=".", label="best minimum area")
    no_gate = tuning[tuning["min_area"] == 0].groupby("threshold")["dice"].max()
    left.plot(no_gate.index, no_gate.to_numpy(), "--", marker=".", label="no minimum area")
    if presence_threshold:
        ungated = everything[everything["presence_threshold"] == 0].groupby("threshold")["dice"]
        left.plot(ungated.max().index,
                  ungated.max().to_numpy(), ":", marker=".", label="no presence gate")
    left.axvline(threshold, color="C3", label=f"chosen {threshold:.2f}")
    gate = f", presence threshold {presence_threshold:.1f}" if presence_threshold else ""
    left.set(title=f"mean Dice by threshold{gate}", xlabel="probability threshold")
    chosen = tuning[np.isclose(tuning["threshold"], threshold)].sort_values("min_area")
    right.plot(chosen["min_area"], chosen["dice"], marker=".", label=f"threshold {threshold:.2f}")
    right.axvline(min_area, color="C3", label=f"chosen {min_area} px")
    right.set(title="mean Dice by minimum mask area",
              xlabel="minimum area (pixels of the original image)")
    for ax in (left, right):
        ax.set_ylabel("mean Dice (working size)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def draw_cases(cases, figure=None, panel=2.6, dpi=80):
    """One row per case: the image, the truth, the prediction, and both outlines on the image."""
    if figure is None:
        from matplotlib.figure import Figure as figure
    h, w = cases[0]["image"].shape[:2]
    fig = figure(figsize=(4 * panel, len(cases) * (panel * h / w + 0.35) + 0.5), dpi=dpi,
                 layout="constrained")
    axes = fig.subplots(len(cases), 4, squeeze=False)
    for row, case in zip(axes, cases):
        image, truth, prob, mask = case["image"], case["truth"], case["prob"], case["mask"]
        row[0].imshow(image, cmap="gray", vmin=0, vmax=255)
        row[0].set_title(case["label"], fontsize=8, loc="left")
        if truth is None:
            row[1].imshow(np.zeros(image.shape[:2]), cmap="gray", vmin=0, vmax=1)
            row[1].text(0.5, 0.5, "no ground truth", color="white", ha="center", va="center",
                        transform=row[1].transAxes)
            row[1].set_title("truth: none", fontsize=8)
        else:
            row[1].imshow(truth, cmap="gray", vmin=0, vmax=max(1, int(truth.max())))  # labels 0..K
            row[1].set_title(f"truth: {np.count_nonzero(truth)} px", fontsize=8)
        row[2].imshow(prob, cmap="viridis", vmin=0, vmax=1)
        outline(row[2], mask, PREDICTION)
        row[2].set_title(f"prediction: {np.count_nonzero(mask)} px", fontsize=8)
        row[3].imshow(image, cmap="gray", vmin=0, vmax=255)
        if truth is not None:
            outline(row[3], truth, TRUTH)
        outline(row[3], mask, PREDICTION)
        dice = "" if truth is None else f"Dice {dice_per_image(mask[None], truth[None])[0]:.3f}"
        row[3].set_title(f"overlay  {dice}", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    fig.suptitle(LEGEND, fontsize=8)
    return fig


def outline(ax, mask, color):
    if mask.any():
        ax.contour(mask, levels=[0.5], colors=color, linewidths=1)


PREVIEW_COLOURS = [(0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 128, 0),
                   (0, 0, 255)]  # BGR, per class


def save_previews(folder, images, masks, ids, sizes=None):
    folder.mkdir(parents=True, exist_ok=True)
    for n, (image, mask, i) in enumerate(zip(images, masks, ids)):
        h, w = sizes[n] if sizes is not None else mask.shape
        image, mask = np.asarray(image)[:h, :w], np.asarray(mask)[:h, :w]
        overlay = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)
        for c in range(1, int(mask.max(initial=0)) + 1):
            contours, _ = cv2.findContours((mask == c).view(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(overlay, contours, -1, PREVIEW_COLOURS[(c - 1) % len(PREVIEW_COLOURS)],
                             2)
        with atomic_path(folder / f"{i}.png") as tmp:
            if not cv2.imwrite(str(tmp), overlay):
                raise UserError(
                    f"cannot write {folder / f'{i}.png'}: check free disk space and permissions")
