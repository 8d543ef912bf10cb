"""The run report: one self-contained HTML page (images embedded) on how training went and
where the model fails, written by predict.py into --workdir/report.html."""

import base64
import datetime
import html
import io
import logging
import re

import numpy as np

from kit import cases, figures
from kit.files import UserError, write_text

log = logging.getLogger(__name__)

CASES = 4  # worst and best validation frames shown
NO_TABLE = "no validation.csv in the model folder: run `python train.py` again to record it"

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

# ---------------------------------------------------------------- HTML


def embed(fig, alt):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def settings_html(settings):
    items = (f"<li><b>{html.escape(str(k))}</b> {html.escape(str(v))}</li>" for k, v in settings)
    return '<ul class="settings">' + "".join(items) + "</ul>"


def table_html(rows):
    cells = (f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
             for k, v in rows)
    return "<table>" + "".join(cells) + "</table>"


def note(text):
    return f'<p class="note">{html.escape(text)}</p>'


def read_csv(path):
    import pandas as pd

    return pd.read_csv(path) if path.exists() else None


def summary_section(models, config, table, test_masks):
    frames = (f" (mean over {len(table)} frames of {table['subject'].nunique()} subjects, "
              f"never seen in training)" if table is not None else "")
    rows = [("validation Dice, threshold 0.5", f"{config.validation_dice_untuned:.4f}{frames}"),
            ("validation Dice, tuned", f"{config.validation_dice:.4f} (threshold and minimum area "
             f"picked on these same frames: optimistic)")]
    if table is not None:
        has = table["truth_area"] > 0
        rows += [("on frames with a mask", f"{table['dice'][has].mean():.4f} ({has.sum()} frames)"),
                 ("on empty frames", f"{table['dice'][~has].mean():.4f} ({(~has).sum()} frames)"),
                 ("validation frames predicted empty",
                  f"{(table['pred_area'] == 0).mean():.0%} (truly empty: {(~has).mean():.0%})")]
    if test_masks is not None:
        test = test_masks
        empty = float((test.reshape(len(test), -1).max(1) == 0).mean()) if len(test) else np.nan
        rows.append(("test frames predicted empty", f"{empty:.0%} of {len(test)}"))
    h, w = models[0].input_shape[1:3]
    rows.append(("working size", plan_text(config.plan.get("sizing"), w, h)))
    averaged = " (averaged)" if len(models) > 1 else ""
    rows += [("threshold", f"{config.threshold:.2f}"),
             ("minimum mask area", f"{config.min_area} px")]
    if config.recipe.get("gate") or config.presence_threshold:
        rows.append(("presence threshold", presence_text(config.presence_threshold)))
    rows += [("models", f"{', '.join(config.folds)}{averaged}, working size {w}x{h}, "
              f"{models[0].count_params():,} parameters each"),
             ("test-time augmentation", "horizontal flip" if config.tta else "none"),
             ("precision", config.precision)]
    return (f'<p class="score">validation Dice {config.validation_dice_untuned:.4f} '
            f"(tuned {config.validation_dice:.4f})</p>" + table_html(rows))


def presence_text(presence_threshold):
    """What the presence gate of train.py --gate does with the tuned presence threshold."""
    if not presence_threshold:
        return "0.0: the gate unused (not tuned, or no better than the mask alone was)"
    return (f"{presence_threshold:.1f}: an image whose presence probability is below it is "
            f"predicted empty")


def gate_gain(tuning, config):
    """The presence threshold picked, and the best tuned Dice without the presence gate beside
    the best with it (train.py --gate): what the gate bought. '' for a run without it."""
    if "presence_threshold" not in tuning or not (tuning["presence_threshold"] > 0).any():
        return ""
    ungated = tuning.loc[tuning["presence_threshold"] == 0, "dice"].max()
    return (f", presence threshold {presence_text(config.presence_threshold)}; best Dice without "
            f"the presence gate {ungated:.4f}, with it {tuning['dice'].max():.4f}")


def plan_text(plan, w, h):
    """How train.py chose the working size (kit/budget.py), in one line."""
    if not plan:
        return f"{w}x{h}, given (--image-size, --patch) or resumed"
    text = f"{w}x{h}: masks {plan['mask_diameter']:.0f} px across"
    if "seconds_per_step" in plan:
        floor = plan["objects_size"]
        timed = ", ".join(f"{t:.2f} s at {size}" for size, t in plan["seconds_per_step"].items())
        text += (f" ({floor[1]}x{floor[0]} for them); training steps took {timed}: about "
                 f"{plan['predicted_epochs']} epochs in {plan['seconds']} s")
    return text


def distribution_section(table):
    if table is None:
        return note(NO_TABLE)
    return embed(figures.distribution_figure(table), "validation Dice distribution")


def tuning_section(model_dir, config):
    tuning = read_csv(model_dir / "tuning.csv")
    if tuning is None or not len(tuning):
        return note(f"not tuned (train.py --no-tune): threshold {config.threshold:.2f}, "
                    f"minimum area {config.min_area} px")
    figure = figures.tuning_figure(tuning, config.threshold, config.min_area,
                                   config.presence_threshold)
    return note(f"picked on the validation predictions of {len(config.folds)} model(s): "
                f"threshold {config.threshold:.2f}, minimum area {config.min_area} px "
                f"(a smaller predicted mask is emptied){gate_gain(tuning, config)}") + embed(
                    figure, "threshold and minimum area")


def cases_section(work, models, config, table):
    if table is None:
        return note(NO_TABLE)
    order = np.argsort(table["dice"].to_numpy(), kind="stable")
    worst = [int(p) for p in order[:CASES]]
    best = [int(p) for p in order[::-1]
            if table["truth_area"].iloc[p] > 0 and int(p) not in worst][:CASES]
    parts = []
    for title, positions in ((f"the {len(worst)} worst validation frames", worst),
                             (f"the {len(best)} best validation frames with a mask", best)):
        if not positions:
            continue
        try:
            shown = cases.training_cases(work, positions, models, config, validation_only=True)
        except UserError as e:
            return note(f"cannot show validation frames: {e}")
        parts.append(f"<h3>{html.escape(title)}</h3>" +
                     embed(figures.draw_cases(shown, panel=2.4, dpi=80), title))
    return "".join(parts)


def write_report(work, models, config, test_masks=None, path=None):
    """Write the report of the model in work/model (and of its test masks, where given) to
    `path` (default work/report.html: predict.py stages it with the masks) and return it."""
    model_dir = work / "model"
    table = read_csv(model_dir / "validation.csv")
    histories = [
        model_dir / f"history_{re.sub(r'[.]keras$', '', name)}.csv" for name in config.folds
    ]
    settings = sorted({**config.recipe, **config.options}.items())
    sections = [("Summary", summary_section(models, config, table, test_masks)),
                ("Training curves", embed(figures.curves_figure(histories), "training curves")),
                ("Validation score, frame by frame", distribution_section(table)),
                ("Threshold and minimum area", tuning_section(model_dir, config)),
                ("Worst and best validation frames", cases_section(work, models, config, table)),
                ("Settings (train.py)", settings_html(settings))]
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Run report: "
        f"{html.escape(str(work))}</title><style>{STYLE}</style></head><body><h1>Run report</h1>" +
        note(f"{work}, {when}") + "".join(f"<h2>{html.escape(title)}</h2>{body}"
                                          for title, body in sections) + "</body></html>")
    path = path or work / "report.html"
    write_text(path, page)
    log.info(f"report -> {work / 'report.html'}")
    return path
