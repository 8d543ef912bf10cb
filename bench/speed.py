"""Speed benchmark: each stage of the kit beside the 2017 Keras tutorial's way, same data, same
machine.

    python bench/speed.py          # the competition's volume: 5,635 training pairs, 5,508 tests
    python bench/speed.py --quick  # a tenth of it, for a quick look

The images are the real ones in ../shared/data/nerve-kaggle-sample, repeated to the volume.
Each (stage, way) runs in a fresh process, so that its peak memory is its own: peak RSS from the
kernel (memory-mapped file pages count) and peak anonymous memory (sampled). Times count the work,
not the interpreter's start or the imports. On a shared machine, --repeat 2 keeps the faster of
two runs of each way. A second table sets the network's stages beside the FLOP floor: its
convolutions at the best rate a lone 3x3 convolution reaches on this machine (CPU or GPU).

This file is the harness (volumes, fixtures, timing, the tables, the command line) and the kit's
way of each stage (data, train, predict, submission): what data.py, train.py, predict.py and
submission.py do. The tutorial's way of each stage is in bench/tutorial.py, beside this file.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the kit's library, kit/
import tutorial  # noqa: E402  (bench/tutorial.py, beside this file: the tutorial's way)

SAMPLE = ROOT.parent / "shared" / "data" / "nerve-kaggle-sample"
WORK = ROOT / "work" / "bench"
SHAPE = (420, 580)
# train pairs, test images, training frames and epochs, forward passes timed, Dice epochs
# and seeds
VOLUMES = {
    "full": dict(pairs=5635, tests=5508, frames=1024, epochs=2, forward=1024, dice_epochs=8,
                 dice_seeds=[42, 43]),
    "quick": dict(pairs=564, tests=551, frames=128, epochs=2, forward=128, dice_epochs=3,
                  dice_seeds=[42])
}
WARMUP_STEPS = 3  # the first steps trace and compile: not timed
RESULT = "BENCH "  # prefix of the JSON line a measured process prints


def get_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tenth of the volume")
    p.add_argument("--stages", nargs="+", default=["data", "train", "predict", "submission"],
                   choices=["data", "train", "predict", "submission"], help="stages to run")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each way; the fastest counts (a busy machine)")
    p.add_argument("--no-dice", dest="dice", action="store_false",
                   help="skip the validation-Dice check of float32 against the automatic precision")
    p.add_argument("--one", nargs=2, metavar=("STAGE", "WAY"), help=argparse.SUPPRESS)
    return p.parse_args()


def volume(quick):
    name = "quick" if quick else "full"
    return name, VOLUMES[name], WORK / name


def report(**result):
    print(RESULT + json.dumps(result), flush=True)


# ---------------------------------------------------------------- fixtures from the real images


def real_pairs():
    from kit import layouts

    sets = layouts.competition(SAMPLE, skip_unpaired=True)  # 2_20_mask.tif has no image
    return [image for _, image, _ in sets.train], [masks[0] for _, _, masks in sets.train]


def real_tests():
    from kit import layouts

    return [image for _, image, _ in layouts.competition(SAMPLE, skip_unpaired=True).test]


def link(source, target):
    try:
        os.link(source, target)  # no disk cost
    except OSError:
        shutil.copyfile(source, target)


def raw_folder(base, v):
    """The competition's layout with the real files repeated to the volume (47 subjects, as
    Kaggle's)."""
    raw = base / "raw"
    if (raw / ".complete").exists():
        return raw
    shutil.rmtree(raw, ignore_errors=True)
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir()
    images, masks = real_pairs()
    per_subject = -(-v["pairs"] // 47)
    for i in range(v["pairs"]):
        name = f"{i // per_subject + 1}_{i % per_subject + 1}"
        link(images[i % len(images)], raw / "train" / f"{name}.tif")
        link(masks[i % len(masks)], raw / "train" / f"{name}_mask.tif")
    tests = real_tests()
    for i in range(v["tests"]):
        link(tests[i % len(tests)], raw / "test" / f"{i + 1}.tif")
    (raw / ".complete").touch()
    return raw


def repeated(paths, n, is_mask=False):
    from kit import images

    frames = np.stack([
        images.read_mask([p], p, images.image_size(p), images.label_table(1))
        if is_mask else images.read_image(p) for p in paths
    ])
    return frames[np.arange(n) % len(frames)]


def test_arrays(base, v):
    """imgs_test.npy for the predict stage and imgs_mask_test.npy (real masks) for the submission
    stage."""
    from kit.files import save_npy

    folder = base / "arrays"
    if not (folder / "imgs_mask_test.npy").exists():
        save_npy(folder / "imgs_test.npy", repeated(real_tests(), v["tests"]))
        save_npy(folder / "imgs_id_test.npy", np.arange(1, v["tests"] + 1, dtype=np.int32))
        save_npy(folder / "imgs_mask_test.npy", repeated(real_pairs()[1], v["tests"], is_mask=True))
    return folder


def workdir(base, name, *arrays):
    """A fresh workdir holding hard links to the shared arrays."""
    folder = base / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for array in arrays:
        link(base / "arrays" / array, folder / array)
    return folder


def npy_bytes(folder):
    return sum(p.stat().st_size for p in Path(folder).glob("*.npy"))


# ---------------------------------------------------------------- data


def data_kit(base, v):
    """What data.py does with the competition's layout: list, decode in threads, write, then look
    for contradicting near-duplicates."""
    from types import SimpleNamespace
    from kit import arrays, duplicates, layouts
    from kit.files import output_set

    out = base / "data-kit"
    options = SimpleNamespace(channels=1, classes=1, label_map=[], workers=os.cpu_count(),
                              quiet=True)
    started = time.perf_counter()
    sets = layouts.competition(base / "raw", False)
    with output_set(out, "bench") as staged:
        arrays.write_sets(sets, staged, options, one_size=True)
        decoded = time.perf_counter() - started
        duplicates.check(staged, [stem for stem, _, _ in sets.train])
    seconds = time.perf_counter() - started
    report(
        images=2 * v["pairs"] + v["tests"], seconds=seconds, output_bytes=npy_bytes(out),
        note=f"decoding {decoded:.1f} s, then the near-duplicate check {seconds - decoded:.1f} s")


def data_tutorial(base, v):
    out = base / "data-tutorial"
    images, seconds = tutorial.convert(base / "raw", out, SHAPE)
    report(images=images, seconds=seconds, output_bytes=npy_bytes(out))


# ---------------------------------------------------------------- train


def training_frames(v):
    images, masks = real_pairs()
    return repeated(images, v["frames"]), repeated(masks, v["frames"], is_mask=True)


def step_timer(keras):

    class StepTimer(keras.callbacks.Callback):
        """The time of every step after the warm-up steps."""

        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step to finish
            self.ends.append(time.perf_counter())

        def step_seconds(self):
            return np.diff(self.ends[WARMUP_STEPS - 1:])

    return StepTimer()


def train_run(v, precision, make_inputs):
    """Train the tutorial's network and report the steady-state rate of its steps."""
    from kit import model as unet
    from kit.recipe import PRESETS

    keras = unet.keras
    t = PRESETS["tutorial"]
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    fit_data, mean, std = make_inputs(t)
    model = unet.build_unet(t["image_size"], 1, 1, t["width"], t["depth"], t["dropout"],
                            t["batchnorm"], mean, std)
    model.compile(keras.optimizers.Adam(t["lr"]), unet.loss_for(t["loss"], 1),
                  metrics=[unet.dice_metric(1)])
    timer = step_timer(keras)
    fit_data(model, v["epochs"], timer)
    steps = timer.step_seconds()
    # The median step: every step does the same work, and a shared machine slows some of them.
    report(images=len(steps) * t["batch_size"], seconds=float(np.median(steps)) * len(steps),
           precision=precision,
           gflop=forward_gflop(model) * 3)  # a training step: forward + two backward passes


def train_tutorial(base, v):
    images, masks = training_frames(v)

    def make_inputs(t):
        x, y = tutorial.training_arrays(images, masks, t["image_size"])

        def fit(model, epochs, timer):
            tutorial.fit(model, x, y, t["batch_size"], epochs, [timer])

        return fit, 0.0, 1.0

    train_run(v, "float32", make_inputs)


def train_kit(base, v, precision="auto"):
    from kit import dataset, images as kit_images, training

    images, masks = training_frames(v)

    def make_inputs(t):
        x = kit_images.resize_stack(images, t["image_size"], "area")
        y = kit_images.resize_stack(masks, t["image_size"], "area")

        def fit(model, epochs, timer):  # as training.train_fold does, less its per-epoch callbacks
            ds = dataset.dataset(x, y, t["batch_size"], 0, range(epochs), shuffle=True,
                                 augment=t["augment"])
            steps = dataset.steps_per_epoch(len(x), t["batch_size"], t["augment"])
            model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[timer])

        return fit, float(x.mean()), float(x.std())

    train_run(v, training.choose_precision(precision), make_inputs)


def train_kit_float32(base, v):
    train_kit(base, v, "float32")


def forward_gflop(model):
    """Multiply-adds of the convolutions, x2, for one image."""
    flop = 0
    for layer in model.layers:
        if type(layer).__name__ in ("Conv2D", "Conv2DTranspose"):
            h, w, c_out = layer.output.shape[1:]
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            sh, sw = layer.strides
            flop += 2 * h * w * c_out * c_in * kh * kw / (sh * sw)
    return flop / 1e9


def run_script(script, *args):
    result = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True,
                            text=True)
    if result.returncode:
        sys.exit(f"{script} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def dice_check(base, v):
    """The kit's default recipe on the demo data, float32 beside the automatic precision, per
    seed."""
    demo = base.parent / "demo"
    if not (demo / "imgs_train.npy").exists():
        run_script(ROOT / "data.py", "--demo", "--raw", demo / "raw", "--workdir", demo, "-q")
    out = {}
    for precision in ("float32", "auto"):
        for seed in v["dice_seeds"]:
            work = demo / f"{precision}-{seed}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            for name in ("imgs_train", "imgs_mask_train", "imgs_subject_train"):
                link(demo / f"{name}.npy", work / f"{name}.npy")
            run_script(ROOT / "train.py", "--workdir", work, "--epochs", v["dice_epochs"],
                       "--image-size", 96, 128, "--precision", precision, "--seed", seed, "-q")
            config = json.loads((work / "model" / "config.json").read_text())
            out.setdefault(precision, []).append(config["validation_dice"])
            out[f"{precision} name"] = config["precision"]
    return out


# ---------------------------------------------------------------- predict


def predict_setup(base, v):
    """One set of weights (built in float32), and the kit's model with them under its precision,
    saved with the config train.py would write for the tutorial's post-processing."""
    from kit import config, model as unet
    from kit.recipe import PRESETS
    from kit.training import choose_precision

    t = PRESETS["tutorial"]
    unet.keras.utils.set_random_seed(0)
    net = unet.build_unet(t["image_size"], 1, 1, t["width"], t["depth"], t["dropout"],
                          t["batchnorm"], 100.0, 50.0)
    net.save_weights(base / "arrays" / "unet.weights.h5")
    for precision in ("auto", "float32"):
        folder = base / "arrays" / f"model-{precision}"
        precision = choose_precision(precision)
        unet.keras.mixed_precision.set_global_policy(precision)
        kit = unet.build_unet(t["image_size"], 1, 1, t["width"], t["depth"], t["dropout"],
                              t["batchnorm"], 100.0, 50.0)
        kit.load_weights(base / "arrays" / "unet.weights.h5")
        folder.mkdir(parents=True, exist_ok=True)
        kit.save(folder / "fold0.keras")
        size = t["image_size"]
        config.save(
            folder,
            config.Config(folds=["fold0.keras"], tta=False, precision=precision,
                          original_size=list(SHAPE),
                          scale=[round(size[0] / SHAPE[0], 6),
                                 round(size[1] / SHAPE[1], 6)]))
    report(precision=choose_precision("auto"))


def predict_kit(base, v, precision="auto"):
    """What predict.py does: load the models, predict the final masks in chunks into a .npy."""
    from kit import arrays, inference

    work = workdir(base, f"predict-kit-{precision}", "imgs_test.npy", "imgs_id_test.npy")
    started = time.perf_counter()
    images, ids = arrays.load_test_set(work)
    models, config = inference.load_models(base / "arrays" / f"model-{precision}")
    out = np.lib.format.open_memmap(work / "imgs_mask_test.npy", mode="w+", dtype=np.uint8,
                                    shape=images.shape)
    inference.predict_set(models, config, images, None, out, 64, 512, quiet=True)
    del out
    seconds = time.perf_counter() - started
    policies = [layer.dtype_policy.name for layer in models[0].layers]
    report(images=v["tests"], seconds=seconds,
           output_bytes=(work / "imgs_mask_test.npy").stat().st_size,
           gflop=forward_gflop(models[0]), precision=max(set(policies), key=policies.count))


def predict_kit_float32(base, v):
    predict_kit(base, v, "float32")


def predict_tutorial(base, v):
    from kit.recipe import PRESETS

    work = workdir(base, "predict-tutorial")
    images, seconds, model, timed = tutorial.predict(base / "arrays", work, PRESETS["tutorial"],
                                                     SHAPE, v["forward"])
    report(images=images, seconds=seconds, output_bytes=npy_bytes(work),
           gflop=forward_gflop(model), precision="float32",
           note=f"forward pass timed on {timed} of {images} images")


# ---------------------------------------------------------------- submission


def submission_kit(base, v):
    """What submission.py does: encode every mask, then read the CSV back checking every row."""
    from kit import arrays, rle

    work = workdir(base, "submission-kit", "imgs_mask_test.npy", "imgs_id_test.npy",
                   "imgs_test.npy")
    started = time.perf_counter()
    ids = arrays.load(work, arrays.TEST_IDS, "ids")
    masks = arrays.load(work, arrays.TEST_MASKS, "masks", mmap=True)
    rle.write_submission(work / "submission.csv", masks, ids, quiet=True)
    rle.read_submission(work / "submission.csv", masks.shape[1:], rle.row_ids(ids, 1))
    seconds = time.perf_counter() - started
    report(images=v["tests"], seconds=seconds,
           output_bytes=(work / "submission.csv").stat().st_size)


def submission_tutorial(base, v):
    work = workdir(base, "submission-tutorial")
    images, seconds = tutorial.submission(base / "arrays", work / "submission.csv")
    report(images=images, seconds=seconds, output_bytes=(work / "submission.csv").stat().st_size)


# ---------------------------------------------------------------- the machine


def machine(base, v):
    """What runs the benchmark, and its best rates: 3x3 convolutions at the U-Net's shapes, memory
    copy."""
    from kit import training

    tf, keras = training.tf, training.keras
    gpus = tf.config.list_physical_devices("GPU")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
              if gpus else None)
    levels = [(64, 96), (128, 48), (256, 24), (512, 12)]
    conv = {
        dtype: max(conv_gflops(tf, dtype, c, side) for c, side in levels for _ in range(2))
        for dtype in ("float32", "bfloat16")
        if dtype == "float32" or gpus or training.cpu_has_bf16()
    }
    source, target = np.ones(2**28, np.uint8), np.zeros(2**28, np.uint8)
    np.copyto(target, source)  # first touch of the pages: not timed
    started = time.perf_counter()
    for _ in range(4):
        np.copyto(target, source)
    copy_gbs = 4 * 2 * source.nbytes / (time.perf_counter() - started) / 1e9  # read + write
    report(cpu=cpu_model(), cores=os.cpu_count(), bf16=training.cpu_has_bf16(), gpu=device,
           precision=training.choose_precision("auto"), tensorflow=tf.__version__,
           keras=keras.__version__, conv=conv, copy_gbs=copy_gbs)


def conv_gflops(tf, dtype, channels, side, batch=32, seconds=0.3):
    """GFLOP/s of one 3x3 convolution of the U-Net's shape at one level: the rate its layers could
    reach."""
    x = tf.cast(tf.random.normal((batch, side, side, channels)), dtype)
    kernel = tf.cast(tf.random.normal((3, 3, channels, channels)), dtype)
    step = tf.function(lambda: tf.nn.conv2d(x, kernel, 1, "SAME")[0, 0, 0, 0], autograph=False)
    step().numpy()
    started, reps = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step().numpy()
        reps += 1
    return 2 * batch * side * side * 9 * channels**2 * reps / (time.perf_counter() - started) / 1e9


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


# ---------------------------------------------------------------- measuring a process

WAYS = {
    ("data", "kit"): data_kit,
    ("data", "tutorial"): data_tutorial,
    ("train", "kit"): train_kit,
    ("train", "tutorial"): train_tutorial,
    ("train", "kit-float32"): train_kit_float32,
    ("predict", "kit-float32"): predict_kit_float32,
    ("predict", "setup"): predict_setup,
    ("predict", "kit"): predict_kit,
    ("predict", "tutorial"): predict_tutorial,
    ("submission", "kit"): submission_kit,
    ("submission", "tutorial"): submission_tutorial,
    ("machine", "info"): machine
}


def anon_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return 0


def measure(stage, way, quick):
    """Run one way in a fresh process: its report, its peak RSS (from the kernel; memory-mapped
    file pages count) and its peak anonymous memory (sampled every 20 ms)."""
    command = [sys.executable, __file__, "--one", stage, way] + (["--quick"] if quick else [])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    anon = [0]

    def sample():
        while proc.returncode is None:
            anon[0] = max(anon[0], anon_kib(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    lines = [line[len(RESULT):] for line in stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not lines:
        sys.exit(f"{stage} ({way}) failed with exit code "
                 f"{proc.returncode}:\n{stdout[-3000:]}{stderr[0][-3000:]}")
    return {**json.loads(lines[-1]), "peak_mib": usage.ru_maxrss / 1024, "anon_mib": anon[0] / 1024}


# ---------------------------------------------------------------- the table


def rate(r):
    return r["images"] / r["seconds"]


def run_stage(stage, base, v, args):
    print(f"{stage}: ", end="", flush=True)
    results = {}
    ways = [w for s, w in WAYS if s == stage and w != "setup"]  # tutorial, kit, kit-float32
    for way in ways:
        results[way] = r = max((measure(stage, way, args.quick) for _ in range(args.repeat)),
                               key=rate)
        print(
            f"{way} {rate(r):.1f} img/s ({r['images']} images in {r['seconds']:.1f} s, "
            f"peak {r['peak_mib']:.0f} MiB){'; ' if way != ways[-1] else ''}", end="", flush=True)
    print()
    return results


def goal(stage, kit, tutorial, rows):
    ratio = rate(kit) / rate(tutorial)
    if stage == "data":
        ok = ratio >= 2 and kit["peak_mib"] <= 1.2 * kit["output_bytes"] / 2**20
        return f">= 2x, peak <= 1.2x output: {'yes' if ok else 'NO'}"
    if stage in ("train", "predict"):
        return f">= 3x: {'yes' if ratio >= 3 else 'NO'}"
    if "predict" in rows:
        return f"faster than predict: {'yes' if rate(kit) > rate(rows['predict']['kit']) else 'NO'}"
    return ""


def table(rows):
    lines = [
        "| stage | images | kit img/s | tutorial img/s | ratio | kit peak MiB (RSS / anon) | "
        "tutorial peak MiB (RSS / anon) | output MiB | goal |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    ]
    for stage, r in rows.items():
        tut = r["tutorial"]
        for way in ("kit", "kit-float32"):
            if way not in r:
                continue
            kit, name = r[way], stage if way == "kit" else f"{stage} ({way}, as the tutorial)"
            output = f"{kit['output_bytes'] / 2**20:.0f}" if "output_bytes" in kit else "-"
            lines.append(
                f"| {name} | {kit['images']} | {rate(kit):.1f} | {rate(tut):.1f} | "
                f"{rate(kit) / rate(tut):.1f}x | {kit['peak_mib']:.0f} / {kit['anon_mib']:.0f} | "
                f"{tut['peak_mib']:.0f} / {tut['anon_mib']:.0f} | {output} | "
                f"{goal(stage, kit, tut, rows)} |")
    return "\n".join(lines)


def floors(rows, info):
    """The network's stages beside the FLOP floor: its convolutions at the best rate measured
    here."""
    lines = [
        "| stage | way | precision | GFLOP/image | achieved GFLOP/s | best conv GFLOP/s | share "
        "| ceiling img/s |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    ]
    for stage in ("train", "predict"):
        for way in ("tutorial", "kit", "kit-float32"):
            if stage not in rows or way not in rows[stage]:
                continue
            r = rows[stage][way]
            best = info["conv"]["bfloat16" if "bfloat16" in r["precision"] else "float32"]
            achieved = r["gflop"] * rate(r)
            lines.append(
                f"| {stage} | {way} | {r['precision']} | {r['gflop']:.2f} | {achieved:.0f} | "
                f"{best:.0f} | "
                f"{achieved / best:.0%} | {best / r['gflop']:.0f} |")
    return "\n".join(lines)


def print_machine(info, name, v):
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ""
    print(f"machine: {info['cpu']}, {info['cores']} cores, bf16 {'yes' if info['bf16'] else 'no'}"
          f"{gpu}; TensorFlow {info['tensorflow']}, Keras {info['keras']}")
    print(f"kit precision (auto): {info['precision']}; best 3x3 convolution: "
          f"{', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in info['conv'].items())}; "
          f"memory copy {info['copy_gbs']:.1f} GB/s; load average {os.getloadavg()[0]:.1f}")
    print(
        f"volume: {name}, {v['pairs']} training pairs, {v['tests']} test images "
        f"(real images repeated)\n", flush=True)


def print_notes(rows, v, dice):
    notes = []
    if "data" in rows:
        notes.append(f"data: images counts image and mask files; the tutorial's way reads them "
                     f"with PIL, one by one; the kit's: {rows['data']['kit']['note']}")
    if "train" in rows:
        notes.append(f"train: steps of 32 at the tutorial's architecture "
                     f"({rows['train']['kit']['gflop'] / 3:.2f} GFLOP forward per image) on "
                     f"{v['frames']} real frames, {v['epochs']} epochs; the median step after "
                     f"the first {WARMUP_STEPS} counts")
    if "predict" in rows:
        notes.append(f"predict: {rows['predict']['tutorial']['note']}")
    if "submission" in rows:
        notes.append("submission: kit = what submission.py does (encode, then read back and "
                     "check every row)")
    if dice:
        f32, auto = np.mean(dice["float32"]), np.mean(dice["auto"])
        each = " ".join(f"{d:.4f}" for d in dice["float32"]), " ".join(f"{d:.4f}"
                                                                       for d in dice["auto"])
        notes.append(f"validation Dice, kit default recipe on the demo data ({v['dice_epochs']} "
                     f"epochs, 96x128, seeds {' '.join(map(str, v['dice_seeds']))}): float32 "
                     f"{each[0]} (mean {f32:.4f}), auto = {dice['auto name']} {each[1]} "
                     f"(mean {auto:.4f}): difference {auto - f32:+.4f}")
    for note in notes:
        print(f"- {note}")


def main():
    args = get_args()
    name, v, base = volume(args.quick)
    if args.one:
        base.mkdir(parents=True, exist_ok=True)
        return WAYS[tuple(args.one)](base, v)
    if not SAMPLE.is_dir():
        sys.exit(f"{SAMPLE} not found: the benchmark repeats its real images")
    started = time.time()
    base.mkdir(parents=True, exist_ok=True)
    info = measure("machine", "info", args.quick)
    print_machine(info, name, v)
    rows = {}
    for stage in args.stages:
        if stage == "data":
            raw_folder(base, v)
        if stage in ("predict", "submission"):
            test_arrays(base, v)
        if stage == "predict":
            measure("predict", "setup",
                    args.quick)  # a few seconds: always as this version writes it
        rows[stage] = run_stage(stage, base, v, args)
        for folder in base.glob(f"{stage}-*"):  # outputs can be gigabytes
            shutil.rmtree(folder)
    dice = dice_check(base, v) if args.dice and "train" in args.stages else None
    print(f"\n{table(rows)}\n")
    if "train" in rows or "predict" in rows:
        print(f"{floors(rows, info)}\n")
    print_notes(rows, v, dice)
    print(f"- load average {os.getloadavg()[0]:.1f} at the end; whole benchmark "
          f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
