"""Training-step benchmark: seconds per step of the kit's default recipe, with and without its
augmentation, in float32 and the automatic precision, at one working size.

    python bench/steps.py                        # 208x144, batch 16, default network
    python bench/steps.py --size 96 96 --steps 8

Each setting runs in this process one after the other on the same random frames; the first
steps (tracing, compiling) are not timed, the median of the rest counts. Compare the rows of
one run only: the machine and its load change from run to run.
"""

import argparse
import sys
import warnings
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the kit's library, kit/
from kit import dataset, model, training  # noqa: E402

keras = training.keras


def get_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, nargs=2, default=[144, 208], metavar=("H", "W"),
                   help="working size")
    p.add_argument("--batch-size", type=int, default=16, help="images per step")
    p.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    p.add_argument("--precisions", nargs="+", metavar="POLICY",
                   help="Keras precision policies to time (default: float32 and the automatic one)")
    return p.parse_args()


def step_seconds(precision, augment, size, batch, steps):
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = batch * (steps + 2)
    x = rng.integers(0, 255, (n, *size), dtype=np.uint8)
    y = np.zeros((n, *size), np.uint8)
    y[:, size[0] // 3:size[0] // 2, size[1] // 3:size[1] // 2] = 1
    net = model.build_unet(size, mean=127.0, std=70.0)
    net.compile(keras.optimizers.Adam(1e-3), model.loss_for("bce_dice", 1),
                metrics=[model.dice_metric(1)])
    ends = []
    clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs:
                                           (float(logs["loss"]), ends.append(time.perf_counter())))
    data = dataset.dataset(x, y, batch, 0, range(1), shuffle=True, augment=augment)
    net.fit(data, epochs=1, steps_per_epoch=steps + 2, verbose=0, callbacks=[clock])
    return float(np.median(np.diff(ends[1:])))


def main():
    args = get_args()
    warnings.filterwarnings("ignore")   # Keras' shuffle note on tf.data input: not ours to act on
    size = tuple(args.size)
    auto = training.choose_precision("auto")
    print(f"{size[1]}x{size[0]}, batch {args.batch_size}; automatic precision here: {auto}")
    print("| precision | augmentation | s/step | images/s | augmentation's share |")
    print("| --- | --- | ---: | ---: | ---: |")
    for precision in args.precisions or sorted({"float32", auto}):
        plain = step_seconds(precision, False, size, args.batch_size, args.steps)
        augmented = step_seconds(precision, True, size, args.batch_size, args.steps)
        for name, seconds in (("none", plain), ("on", augmented)):
            share = f"{1 - plain / augmented:.0%}" if name == "on" else ""
            print(
                f"| {precision} | {name} | {seconds:.3f} | {args.batch_size / seconds:.1f} | "
                f"{share} |", flush=True)


if __name__ == "__main__":
    main()
