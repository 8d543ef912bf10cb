"""The run report: one self-contained HTML page (images embedded) on how training went and where
the model fails, written by predict.py into --workdir/report.html; and the training curves."""

import base64
import datetime
import html
import io
import re

import numpy as np

import common
from common import UserError, log

CASES = 4   # worst and best validation frames shown

STYLE = """
body { font-family: sans-serif; max-width: 1140px; margin: 1em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; vertical-align: top; }
img { display: block; max-width: 100%; margin: 0.5em 0; }
.score { font-size: 2em; font-weight: bold; }
.note { color: #666; font-size: 0.9em; }
.settings { columns: 4; font-size: 0.9em; list-style: none; padding: 0; }
"""


# ---------------------------------------------------------------- figures

def figure(width=11, height=3.2):
    from matplotlib.figure import Figure   # no pyplot: no global state, no display needed
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def read_history(path):
    import pandas as pd
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None


def curves_figure(histories):
    """Loss, Dice and learning rate per epoch; one colour per fold, validation solid, training dashed."""
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
                ax.plot(epoch, h[f"val_{key}"], "-", color=color, marker=".", label=f"{name} validation")
        if "val_dice" in h:   # the epoch whose weights were kept
            best = int(h["val_dice"].to_numpy().argmax())
            dice.plot(epoch[best], h["val_dice"][best], "*", color=color, markersize=12)
        if "learning_rate" in h:
            lr.plot(epoch, h["learning_rate"], color=color, label=name)
    for ax, title in ((loss, "loss"), (dice, "Dice (threshold 0.5; star: the epoch kept)"), (lr, "learning rate")):
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
    """Write the training curves of the given history CSVs to png (atomically: never half a file)."""
    save(curves_figure(histories), png)


def save(fig, path):
    with common.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def distribution_figure(table):
    """Histogram of the per-frame validation Dice (frames with a nerve / empty frames), and per subject."""
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


def tuning_figure(tuning, threshold, min_area):
    """The mean Dice of every threshold (at its best minimum area, and with none), and of every
    minimum area at the chosen threshold: where the saved values come from."""
    fig = figure()
    left, right = fig.subplots(1, 2)
    per_threshold = tuning.groupby("threshold")["dice"]
    left.plot(per_threshold.max().index, per_threshold.max().to_numpy(), marker=".", label="best minimum area")
    no_gate = tuning[tuning["min_area"] == 0].groupby("threshold")["dice"].max()
    left.plot(no_gate.index, no_gate.to_numpy(), "--", marker=".", label="no minimum area")
    left.axvline(threshold, color="C3", label=f"chosen {threshold:.2f}")
    left.set(title="mean Dice by threshold", xlabel="probability threshold")
    chosen = tuning[np.isclose(tuning["threshold"], threshold)].sort_values("min_area")
    right.plot(chosen["min_area"], chosen["dice"], marker=".", label=f"threshold {threshold:.2f}")
    right.axvline(min_area, color="C3", label=f"chosen {min_area} px")
    right.set(title="mean Dice by minimum mask area", xlabel="minimum area (pixels of the original image)")
    for ax in (left, right):
        ax.set_ylabel("mean Dice (working size)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- HTML

def embed(fig, alt):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def settings_html(settings):
    return '<ul class="settings">' + "".join(f"<li><b>{html.escape(str(k))}</b> {html.escape(str(v))}</li>"
                                              for k, v in settings) + "</ul>"


def table_html(rows):
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows) + "</table>"


def note(text):
    return f'<p class="note">{html.escape(text)}</p>'


def read_csv(path):
    import pandas as pd
    return pd.read_csv(path) if path.exists() else None


def summary_section(work, models, config, table):
    rows = [("validation Dice", f"{config['validation_dice']:.4f}"
             + (f" (mean over {len(table)} frames of {table['subject'].nunique()} subjects, "
                f"never seen in training)" if table is not None else ""))]
    if table is not None:
        has = table["truth_area"] > 0
        rows += [("on frames with a mask", f"{table['dice'][has].mean():.4f} ({has.sum()} frames)"),
                 ("on empty frames", f"{table['dice'][~has].mean():.4f} ({(~has).sum()} frames)"),
                 ("validation frames predicted empty", f"{(table['pred_area'] == 0).mean():.0%} "
                                                       f"(truly empty: {(~has).mean():.0%})")]
    masks = work / "imgs_mask_test.npy"
    if masks.exists():
        test = np.load(masks, mmap_mode="r")
        empty = float((test.reshape(len(test), -1).max(1) == 0).mean()) if len(test) else float("nan")
        rows.append(("test frames predicted empty", f"{empty:.0%} of {len(test)}"))
    h, w = models[0].input_shape[1:3]
    rows += [("threshold", f"{config['threshold']:.2f}"),
             ("minimum mask area", f"{config['min_area']} px"),
             ("models", f"{', '.join(config['folds'])}{' (averaged)' if len(models) > 1 else ''}, "
                        f"working size {w}x{h}, {models[0].count_params():,} parameters each"),
             ("test-time augmentation", "horizontal flip" if config["tta"] else "none"),
             ("precision", config.get("precision", "?"))]
    return (f'<p class="score">validation Dice {config["validation_dice"]:.4f}</p>' + table_html(rows))


def distribution_section(table):
    if table is None:
        return note("no validation.csv in the model folder: run `python train.py` again to record it")
    return embed(distribution_figure(table), "validation Dice distribution")


def tuning_section(model_dir, config):
    tuning = read_csv(model_dir / "tuning.csv")
    if tuning is None or not len(tuning):
        return note(f"not tuned (train.py --no-tune, or an older run): threshold {config['threshold']:.2f}, "
                    f"minimum area {config['min_area']} px")
    return (note(f"picked on the validation predictions of {len(config['folds'])} model(s): "
                 f"threshold {config['threshold']:.2f}, minimum area {config['min_area']} px "
                 f"(a smaller predicted mask is emptied)")
            + embed(tuning_figure(tuning, config["threshold"], config["min_area"]), "threshold and minimum area"))


def cases_section(work, models, config, table):
    import visualize
    if table is None:
        return note("no validation.csv in the model folder: run `python train.py` again to record it")
    order = np.argsort(table["dice"].to_numpy(), kind="stable")
    worst = [int(p) for p in order[:CASES]]
    best = [int(p) for p in order[::-1] if table["truth_area"].iloc[p] > 0 and int(p) not in worst][:CASES]
    parts = []
    for title, positions in ((f"the {len(worst)} worst validation frames", worst),
                             (f"the {len(best)} best validation frames with a mask", best)):
        if not positions:
            continue
        try:
            cases = visualize.training_cases(work, positions, models, config, validation_only=True)
        except UserError as e:
            return note(f"cannot show validation frames: {e}")
        parts.append(f"<h3>{html.escape(title)}</h3>"
                     + embed(visualize.draw_cases(cases, panel=2.4, dpi=80), title))
    return "".join(parts)


def write_report(work, models, config):
    """Write work/report.html and return its path."""
    model_dir = work / "model"
    table = read_csv(model_dir / "validation.csv")
    histories = [model_dir / f"history_{re.sub(r'[.]keras$', '', name)}.csv" for name in config["folds"]]
    settings = sorted(config.get("settings", {}).items())
    sections = [
        ("Summary", summary_section(work, models, config, table)),
        ("Training curves", embed(curves_figure(histories), "training curves")),
        ("Validation score, frame by frame", distribution_section(table)),
        ("Threshold and minimum area", tuning_section(model_dir, config)),
        ("Worst and best validation frames", cases_section(work, models, config, table)),
        ("Settings (train.py)", settings_html(settings)),
    ]
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Run report: {html.escape(str(work))}"
            f"</title><style>{STYLE}</style></head><body><h1>Run report</h1>"
            + note(f"{work}, {when}")
            + "".join(f"<h2>{html.escape(title)}</h2>{body}" for title, body in sections)
            + "</body></html>")
    path = work / "report.html"
    with common.atomic_path(path) as tmp:
        tmp.write_text(page)
    log.info(f"report -> {path}")
    return path
