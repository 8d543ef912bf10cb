"""What a training run is: the recipe and the options the user gave, and the plan the run derives
from them, the data and the machine (kit/budget.py makes it). Three frozen objects, so that
nothing downstream rewrites what the user asked for:

    Recipe   what the training computes; a resumed run must give the same one
    Options  how this run goes (where, how long, which folds, post-processing); may change on
             --resume
    Plan     what the run derived: working size, classes, channels, loss, class weights,
             precision, folds, epochs, patience, the seconds it trains

Light on purpose (no TensorFlow): train.py checks its options against these before the
framework loads, so that a typo is answered at once.
"""

import dataclasses
import logging
from pathlib import Path

from kit.files import UserError

log = logging.getLogger(__name__)

# The vocabulary of the recipe. kit/model.py and kit/encoders.py hold what each name builds
# (tests/test_recipe.py checks that they agree).
BINARY_LOSSES = ("dice", "bce", "bce_dice", "jaccard", "tversky", "focal_tversky", "lovasz",
                 "bce_dice_focal")
CATEGORICAL_LOSSES = ("cce", "multiclass_dice", "cce_dice", "weighted_cce", "lovasz_softmax")
# A binary loss's categorical twin, so that one --loss works for both kinds of mask.
CATEGORICAL_TWIN = {"bce": "cce", "dice": "multiclass_dice", "bce_dice": "cce_dice",
                    "lovasz": "lovasz_softmax"}
# The keras.applications backbones --encoder names, each with the no-top ImageNet weights file
# that keras.applications downloads for it (kit/encoders.py wires them).
ENCODERS = {
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    "efficientnetv2b0": "efficientnetv2-b0_notop.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
ENCODER_STRIDE = 32  # every encoder halves the size 5 times
SCHEDULES = ("cosine", "constant", "restarts", "onecycle")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
PRESETS = {
    # The 2017 Keras tutorial: 96x96 squashed input, filters 32..512, transposed convolutions,
    # no batch normalisation or dropout, loss -Dice (smooth 1), Adam 1e-5, batch 32, 20 epochs.
    "tutorial": dict(image_size=[96, 96], width=32, depth=4, batchnorm=False, dropout=0.0,
                     loss="dice", lr=1e-5, batch_size=32, epochs=20, augment=False,
                     schedule="constant", tune=False, tta=False)
}
# Without a time limit; under one the budget plans the epochs and nothing stops early.
EPOCHS, PATIENCE = 60, 15


def loss_name(name, classes):
    """The loss --loss names for these masks: label masks take a binary name's twin."""
    return name if classes == 1 else CATEGORICAL_TWIN.get(name, name)


def stride(encoder, depth):
    """What the working size's sides must be multiples of: the kit's U-Net halves them `depth`
    times, every encoder ENCODER_STRIDE."""
    return ENCODER_STRIDE if encoder else 2**depth


def flag(field):
    return "--" + field.replace("_", "-")


def at_least(value, least, field):
    if value is not None and value < least:
        raise UserError(f"{flag(field)} must be at least {least}")


def positive(value, field):
    if value is not None and not value > 0:
        raise UserError(f"{flag(field)} must be more than 0")


def fields_of(cls, args):
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The options that change what the training computes."""

    epochs: int = None  # most epochs a fold trains (None: the plan decides)
    batch_size: int = 16
    lr: float = 1e-3
    schedule: str = "cosine"
    loss: str = "bce_dice"
    image_size: tuple = None  # (H, W), or None: planned
    width: int = 16
    depth: int = 4
    dropout: float = 0.1
    batchnorm: bool = True
    augment: bool = True
    patch: int = 0
    encoder: str = "none"
    freeze_encoder_epochs: int = 0
    ema: bool = False
    gate: bool = False
    folds: int = 5
    patience: int = None  # None: the plan decides
    seed: int = 42
    precision: str = "auto"  # as asked for: the plan holds the one chosen

    def __post_init__(self):
        for field in ("epochs", "batch_size", "width", "depth", "folds"):
            at_least(getattr(self, field), 1, field)
        for field in ("patch", "freeze_encoder_epochs", "patience"):
            at_least(getattr(self, field), 0, field)
        positive(self.lr, "lr")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout {self.dropout}: give a fraction from 0 to below 1")
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(self.image_size))
            if min(self.image_size) < 1:
                raise UserError("--image-size must be at least 1 on each side")
        if self.encoder == "none" and self.freeze_encoder_epochs:
            raise UserError(f"--freeze-encoder-epochs is for a pretrained encoder: add "
                            f"--encoder NAME ({', '.join(ENCODERS)})")

    @classmethod
    def from_args(cls, args):
        return cls(**fields_of(cls, args))

    def stride(self):
        return stride(self.encoder != "none", self.depth)


@dataclasses.dataclass(frozen=True)
class Options:
    """How this run goes: where its files are, how long it may take, which folds it trains, the
    post-processing, the initial weights. A resumed run may change these."""

    workdir: Path = Path("work")
    time_limit: float = 0.0  # seconds for the whole run; 0: none
    fold: str = None  # one fold, "all", or None: the budget decides
    gpus: int = 0
    resume: bool = False
    weights: Path = None
    encoder_weights: str = None
    tune: bool = True
    tta: bool = True
    tensorboard: bool = False
    summary: bool = False
    quiet: bool = False

    def __post_init__(self):
        at_least(self.time_limit, 0, "time_limit")
        at_least(self.gpus, 0, "gpus")
        if self.weights and not Path(self.weights).is_file():
            raise UserError(f"--weights {self.weights} not found: give a .weights.h5 or .keras "
                            f"file (nothing is downloaded)")

    @classmethod
    def from_args(cls, args):
        return cls(**fields_of(cls, args))

    def named_folds(self, folds):
        """The folds --fold names (one, or all of `folds`), or None where the budget decides."""
        if self.fold is None:
            return None
        if self.fold == "all":
            return tuple(range(folds))
        if not (self.fold.isdigit() and int(self.fold) < folds):
            raise UserError(f"--fold {self.fold}: give a fold from 0 to {folds - 1}, or 'all'")
        return (int(self.fold),)


def check(recipe, options):
    """What no single object can check: options that need a recipe's choice."""
    options.named_folds(recipe.folds)
    weights = options.encoder_weights
    if recipe.encoder == "none" and weights:
        raise UserError(f"--encoder-weights is for a pretrained encoder: add --encoder NAME "
                        f"({', '.join(ENCODERS)})")
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise UserError(f"--encoder-weights {weights} does not exist: {weights_hint(recipe.encoder)}")
    if recipe.encoder != "none" and not weights:
        log.warning(f"--encoder {recipe.encoder} without --encoder-weights: the backbone starts "
                    f"from random weights")


def weights_hint(encoder):
    """What to give --encoder-weights for this backbone."""
    hint = f"give the no-top ImageNet weights of {encoder}"
    if encoder in ENCODERS:
        hint += f" (keras.applications file name {ENCODERS[encoder]})"
    return hint + ", or a .weights.h5 saved from it"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run derives from its recipe, the data and the machine (kit/budget.py)."""

    size: tuple  # (H, W) the network trains at
    classes: int  # 1: binary masks; K: labels 1..K
    channels: int
    loss: str  # the recipe's loss for these masks
    class_weights: list  # of background and each class (weighted_cce), None for binary masks
    precision: str  # the one chosen for this machine
    folds: tuple  # the folds this run trains
    epochs: int  # most epochs a fold trains; None: as many as its deadline allows
    patience: int  # epochs without gain before a fold stops; None: never early
    train_until: float = 0.0  # seconds after the start by which training ends; 0: no limit
    sizing: dict = dataclasses.field(default_factory=dict)  # how the size was chosen

    @classmethod
    def from_dict(cls, saved):
        saved = {f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved}
        return cls(**{**saved, "size": tuple(saved["size"]), "folds": tuple(saved["folds"])})

    def to_dict(self):
        return dataclasses.asdict(self)

    def frozen_epochs(self, recipe):
        """The first epochs that train the decoder alone (--freeze-encoder-epochs)."""
        return min(recipe.freeze_encoder_epochs, self.epochs or recipe.freeze_encoder_epochs)
