"""model/config.json: what train.py decided, read back by predict.py, visualize.py and the
report. One writer (save), one reader (load). The working size and the normalisation are
not here: they live inside the saved models (their input shape and Normalization layer)."""

import dataclasses
import json
from pathlib import Path

from kit.files import UserError, write_text

NAME = "config.json"


@dataclasses.dataclass
class Config:
    folds: list  # the model files of the run, averaged by predict.py
    threshold: float = 0.5  # probability above which a pixel is foreground
    min_area: int = 0  # smaller predicted masks are emptied (original pixels)
    presence_threshold: float = 0.0  # --gate: images of lower presence are predicted empty
    tta: bool = True  # average over the horizontal flip
    scale: list = (1.0, 1.0)  # working size / original size, (H, W)
    tile: int = 0  # trained on patches of this size: predict by tiles
    original_size: list = None  # the training images' (H, W)
    validation_dice: float = None  # out of fold, with the tuned threshold and minimum area
    validation_dice_untuned: float = None  # out of fold, threshold 0.5 and no minimum area
    class_scores: dict = None  # {class: {"dice", "iou"}}, tuned
    precision: str = "float32"
    # The training arrays' fingerprint (kit/arrays.py): validation.csv's frames are theirs.
    data: dict = None
    seconds: dict = None  # where the run's time went: "before training", "training" (per fold)
    # What train.py was given and what it derived (kit/recipe.py), for the report and for
    # whoever reads the run later: predict.py needs none of it.
    recipe: dict = dataclasses.field(default_factory=dict)
    options: dict = dataclasses.field(default_factory=dict)
    plan: dict = dataclasses.field(default_factory=dict)


def to_json(config):
    return json.dumps(dataclasses.asdict(config), indent=2, default=str)


def save(model_dir, config):
    write_text(Path(model_dir) / NAME, to_json(config))


def load(model_dir):
    path = Path(model_dir) / NAME
    if not path.exists():
        raise UserError(f"{path} not found: run `python train.py` first")
    try:
        data = json.loads(path.read_text())
        config = Config(
            **{f.name: data[f.name]
               for f in dataclasses.fields(Config) if f.name in data})
        config.threshold, config.min_area = float(config.threshold), int(config.min_area)
        config.presence_threshold = float(config.presence_threshold)
        if not config.folds or not all(isinstance(f, str) for f in config.folds):
            raise ValueError("no model files listed")
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path} is damaged ({type(e).__name__}: {e}): run `python train.py` again") from None
    return config
