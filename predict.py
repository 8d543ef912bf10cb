"""Predict the final test masks with the model(s) train.py saved.

    python predict.py
    python predict.py --tile 256 --overlap 32   # images far larger than the working size

Reads --workdir/imgs_test.npy and model/ (every fold listed in config.json is averaged) and
writes imgs_mask_test.npy: (N, H, W) uint8 at the original size, in the order of
imgs_id_test.npy, with the tuned threshold and minimum area applied: {0, 1}, or labels 0..K
for a model of K classes; beside it imgs_mask_test.json, the fingerprint of the test arrays
they were predicted from (submission.py checks it). Also a few preview PNGs in preview/, and
report.html: the run at a glance (see kit/report.py). All of them replace the previous ones
together, once complete.
"""

import logging
from pathlib import Path

import numpy as np

from kit import arrays, cli, figures, images
from kit.files import UserError, check_free_space, new_array, output_set, workdir_lock

log = logging.getLogger(__name__)


def get_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--chunk", type=int, default=512, help="images held in memory at once")
    p.add_argument("--previews", type=int, default=8, help="preview PNGs to write")
    p.add_argument(
        "--tile", type=int, default=0, metavar="SIZE",
        help="predict at the training scale in overlapping SIZE x SIZE tiles, one image "
        "at a time (0: whole images, or the patch size of a --patch model)")
    p.add_argument("--overlap", type=int, default=0, metavar="PIXELS",
                   help="pixels shared by neighbouring tiles (0: a quarter of the tile)")
    p.add_argument("--png", type=Path, metavar="DIR",
                   help="also write each mask as <id>.png at its image's size into this folder")
    return p.parse_args(argv)


def check_fit(work, test, models, config, tile, sizes):
    """The test images must be what the models were trained on: channels, and size unless tiled."""
    channels = models[0].input_shape[-1]
    if (test.shape[3] if test.ndim == 4 else 1) != channels:
        raise UserError(f"the model expects {channels} channel(s) but {work}/imgs_test.npy has "
                        f"shape {test.shape}: train and predict on the same data")
    trained_on = config.original_size
    if trained_on and sizes is None and not tile and list(test.shape[1:3]) != list(trained_on):
        raise UserError(f"{work / 'model'} was trained on {trained_on[1]}x{trained_on[0]} images "
                        f"but {work}/imgs_test.npy holds {test.shape[2]}x{test.shape[1]} ones: run "
                        f"`python data.py` and `python train.py` on this competition's data")


def write_outputs(args, out, models, config, test, ids, sizes, tile):
    """The final masks with the record of the test arrays they come from, the previews and the
    report, staged in `out` (files.OutputSet); returns the share of empty masks."""
    from kit import inference, report
    from kit.model import classes_of

    work = args.workdir
    masks = new_array(out.stage(arrays.path(work, arrays.TEST_MASKS)), np.uint8, test.shape[:3])
    inference.predict_set(models, config, test, sizes, masks, args.batch_size, args.chunk, tile,
                          args.overlap, args.quiet)
    arrays.record_test_set(out, test, ids)
    n = min(args.previews, len(test))
    figures.save_previews(out.stage(work / "preview", folder=True), test[:n], masks[:n], ids[:n],
                          None if sizes is None else sizes[:n])
    if args.png:
        images.save_pngs(args.png, masks, ids, sizes, classes_of(models[0]) == 1)
    masks.flush()
    report.write_report(work, models, config, masks, out.stage(work / "report.html"))
    return float((masks.reshape(len(masks), -1).max(1) == 0).mean())


def main(argv=None):
    args = get_args(argv)
    cli.setup_logging(args)
    work = args.workdir
    with workdir_lock(work, "predict.py"):
        from kit import inference  # TensorFlow, once -v is known

        test, ids = arrays.load_test_set(work)
        models, config = inference.load_models(work / "model")
        sizes = arrays.load_sizes(work, "test", len(test))
        tile = args.tile or config.tile
        check_fit(work, test, models, config, tile, sizes)
        check_free_space(work, int(np.prod(test.shape[:3])), "the test masks")
        with output_set(work, "predict.py") as out:  # masks, record, previews, report: one set
            empty = write_outputs(args, out, models, config, test, ids, sizes, tile)
    log.info(f"{len(test)} masks ({empty:.0%} empty) -> {arrays.path(work, arrays.TEST_MASKS)}")


if __name__ == "__main__":
    cli.run(main)
