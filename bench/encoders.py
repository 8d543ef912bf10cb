"""Seconds per training step of the encoder U-Nets, and of the kit's plain U-Net for comparison.

    python bench/encoders.py [--size 128 128] [--batch 8] [--encoders mobilenetv2 ...]

Random weights and random data: the speed of a step does not depend on them. A frozen encoder
(the decoder warm-up of --freeze-encoder-epochs) is timed too.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kit import encoders, model  # noqa: E402


def seconds_per_step(model, size, batch, steps):
    """Median wall time of a train_on_batch, after 2 untimed steps that trace and warm up."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, *size, model.input.shape[-1])).astype("float32")
    y = (rng.uniform(size=(batch, *size, 1)) > 0.9).astype("float32")
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    for _ in range(2):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_unet(size):
    """The kit's own U-Net (width 16, depth 4)."""
    return model.build_unet(size, 1, 1, width=16, depth=4, mean=100.0, std=50.0)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--encoders", nargs="+", default=["mobilenetv2"],
                        choices=sorted(encoders.ENCODERS))
    args = parser.parse_args()
    size = tuple(args.size)
    print(f"{cpu_name()}, {os.cpu_count()} cores; {size[0]}x{size[1]} grey, batch {args.batch}, "
          f"median of {args.steps} steps")
    for name in args.encoders:
        net = model.encoder_unet(name, size)
        print(f"{name:>24}: {seconds_per_step(net, size, args.batch, args.steps):6.3f} s/step"
              f"  ({net.count_params() / 1e6:.1f} M parameters)", flush=True)
        encoders.freeze(net)
        print(f"{name + ' frozen':>24}: "
              f"{seconds_per_step(net, size, args.batch, args.steps):6.3f} s/step", flush=True)
    net = plain_unet(size)
    print(f"{'plain U-Net':>24}: {seconds_per_step(net, size, args.batch, args.steps):6.3f}"
          f" s/step  ({net.count_params() / 1e6:.1f} M parameters)")


if __name__ == "__main__":
    main()
