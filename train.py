"""Train the U-Net on work/imgs_train.npy and save everything predict.py needs.

    python train.py                       # the kit's defaults, fold 0 of 5
    python train.py --fold all            # every fold: an ensemble, tuned out of fold
    python train.py --time-limit 600      # sized and filled to 10 minutes, folds and all
    python train.py --preset tutorial     # the 2017 Keras tutorial's recipe
    python train.py --patch 256           # 256x256 patches of large images, own scale

Writes into --workdir/model/: fold<i>.keras (the network, with its working size and pixel
statistics inside), config.json (threshold, minimum area, scores, the recipe, the plan and the
training data's fingerprint: kit/config.py), history_fold<i>.csv and curves.png (every epoch),
validation.csv (each validation frame's Dice), tuning.csv (the scores the threshold and minimum
area were picked from), oof.npz (the out-of-fold probabilities; with --gate, each frame's
presence too), all committed together at the end: until then the folder holds the previous
run's. While a fold trains, model/backup_fold<i>/ holds its state (for --resume), its model
once trained, and its history_fold<i>.csv and curves.png, redrawn as it goes.

What the run is asked lives in kit/recipe.py (Recipe: what the training computes; Options: how
this run goes), what it derives from the data and the machine in its Plan (kit/budget.py); the
network is kit/model.py's.
"""

import logging
import time
from pathlib import Path

from kit import cli
from kit.files import output_set, workdir_lock
from kit.recipe import (BINARY_LOSSES, CATEGORICAL_LOSSES, ENCODERS, PRECISIONS, PRESETS,
                        SCHEDULES, Options, Recipe, check)

log = logging.getLogger(__name__)


def add_recipe_flags(p):
    g = p.add_argument_group("the recipe (what the training computes)")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named recipe, whose values become the defaults")
    g.add_argument("--epochs", type=int,
                   help="most epochs per fold (default: 60; under --time-limit, as many as fit, "
                   "uncapped)")
    g.add_argument("--batch-size", type=int, default=16, help="global batch size")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of Adam")
    g.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="learning-rate schedule over the planned epochs: cosine (2 epochs' "
                   "warm-up, then down to 2%% of --lr), constant, restarts (the same warm-up, "
                   "then cosine cycles each twice as long as the last, each restarting at --lr), "
                   "onecycle (--lr/25 rising to --lr at 30%% of the plan, then down to --lr/1e4)")
    g.add_argument("--loss", choices=BINARY_LOSSES + CATEGORICAL_LOSSES, default="bce_dice",
                   help="training loss (label masks: binary names mean their categorical "
                   "twins); lovasz: the Lovász hinge per image (Berman et al. 2018) on the "
                   "clipped logits of the sigmoid, its twin the Lovász-softmax; bce_dice_focal: "
                   "BCE + Dice + focal loss (gamma 2), binary masks only")
    g.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="working size (default: from the size of the masks)")
    g.add_argument("--width", type=int, default=16, help="filters of the first level (doubling)")
    g.add_argument("--depth", type=int, default=4, help="number of down-sampling levels")
    g.add_argument("--dropout", type=float, default=0.1, help="spatial dropout at the bottleneck")
    g.add_argument("--no-batchnorm", dest="batchnorm", action="store_false",
                   help="plain convolutions (default: batch normalisation after each)")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the images as they are (default: flips, rotations, shifts, zooms, elastic warps, brightness and contrast)")
    g.add_argument("--patch", type=int, default=0, metavar="SIZE",
                   help="train on random SIZE x SIZE patches at the images' own scale")
    g.add_argument("--encoder", choices=["none", *ENCODERS], default="none",
                   help="U-Net on this keras.applications backbone (none: the kit's own U-Net)")
    g.add_argument("--freeze-encoder-epochs", type=int, default=0, metavar="N",
                   help="train the decoder alone for the first N epochs")
    g.add_argument("--ema", action="store_true",
                   help="validate, keep and save the moving average of the weights")
    g.add_argument("--gate", action="store_true",
                   help="also predict whether an image holds any mask, and empty those it doubts")
    g.add_argument("--folds", type=int, default=5, help="subject-grouped folds")
    g.add_argument(
        "--patience", type=int,
        help="epochs without validation gain before stopping (default: 15; under "
        "--time-limit none, and a given one waits for half the planned epochs)")
    g.add_argument("--seed", type=int, default=42, help="random seed")
    g.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 where the hardware has it, float16 on older GPUs")


def add_run_flags(p):
    g = p.add_argument_group("the run (may change on --resume)")
    g.add_argument("--time-limit", type=float, default=0,
                   help="seconds for the whole run, which then sizes and fills it; 0: none")
    g.add_argument(
        "--fold", help="fold to train, or 'all' for an ensemble (default: 0; under --time-limit, "
        "as many folds as the budget trains 60 epochs each)")
    g.add_argument("--gpus", type=int, default=0, help="train on this many GPUs (MirroredStrategy)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run")
    g.add_argument(
        "--weights", type=Path, metavar="FILE",
        help="initial weights (.weights.h5 or .keras, e.g. an earlier fold0.keras); "
        "layers that do not fit start fresh; never downloaded")
    g.add_argument("--encoder-weights", metavar="FILE|imagenet",
                   help="the backbone's no-top ImageNet weights file (imagenet: download them)")
    g.add_argument("--no-tune", dest="tune", action="store_false",
                   help="keep threshold 0.5 and no minimum area (default: both tuned out of fold)")
    g.add_argument("--no-tta", dest="tta", action="store_false",
                   help="no flip test-time augmentation (default: the mean over the flip)")
    g.add_argument("--tensorboard", action="store_true", help="also log to model/tensorboard/")
    g.add_argument("--summary", action="store_true",
                   help="print the model (layers, parameters, receptive field) and exit")


def get_args(argv=None):
    p = cli.parser(__doc__)
    add_recipe_flags(p)
    add_run_flags(p)
    preset = p.parse_known_args(argv)[0].preset
    if preset:  # the recipe's values become the defaults: flags given explicitly still win
        p.set_defaults(**PRESETS[preset])
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    cli.setup_logging(args)
    recipe, options = Recipe.from_args(args), Options.from_args(args)  # bad values stop here
    check(recipe, options)
    with workdir_lock(options.workdir, "train.py"):
        # TensorFlow loads here, once the options are known good: a typo is answered at once.
        from kit import budget, dataset, evaluation, training

        started = time.time()  # --time-limit counts from here, after the imports, as it did
        frames = dataset.load_frames(options.workdir)
        data = frames.fingerprint()
        saved = training.interrupted_plan(recipe, options, data)  # --resume: its plan, checked
        precision = saved.precision if saved else training.choose_precision(recipe.precision)
        strategy = training.start(recipe.seed, precision, options.gpus)
        timer = training.step_timer(recipe, options, data, strategy, frames)
        plan = budget.plan_run(recipe, options, frames, precision, timer, time.time() - started,
                               saved)
        run = training.Run(recipe, options, plan, data, strategy)
        if options.summary:
            return training.print_summary(run)
        log.info(training.describe(run, frames))
        working = dataset.to_working_size(frames, plan.size, recipe.patch)
        run.model_dir.mkdir(parents=True, exist_ok=True)
        seconds = {"before training": round(time.time() - started, 1)}
        oof = training.train_folds(run, frames, working, started)
        with output_set(options.workdir, "train.py") as out:  # the model folder, as one set
            result = evaluation.evaluate(run, oof, frames, working, out)
            evaluation.save_config(run, frames, working, result,
                                   {**seconds, "training": oof.seconds}, out)
    log.info(f"trained in {time.time() - started:.0f} s, {sum(oof.seconds):.0f} s of them in "
             f"training -> {run.model_dir}")


if __name__ == "__main__":
    cli.run(main)
