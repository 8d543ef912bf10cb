"""The 2017 Keras tutorial's way of each stage, which bench/speed.py times beside the kit's.

Each stage does the work as the tutorial's scripts did it, on the files bench/speed.py lays out,
and the timed ones time themselves as the kit's ways in bench/speed.py do: the work only, with
the imports made before the clock starts. bench/speed.py runs each in a fresh process (kit/ on
its path) and reports what it returns.
  data        LZW TIFFs -> .npy: a serial loop filling preallocated arrays, then np.save
              (the tutorial read with skimage.io.imread, which needs imagecodecs for LZW: PIL here)
  train       training steps at the tutorial's architecture and input (train.py --preset tutorial):
              float32 model.fit on preprocessed NumPy arrays, shuffle=True
  predict     test arrays -> final full-size masks: skimage resize to 96x96 per image, float32
              model.predict, then per mask the tutorial's threshold at 0.5 and cv2.resize to 580x420
  submission  full-size masks -> CSV: np.load, sort by id, run-length encode each mask with lists
"""

import itertools
import os
import time

import numpy as np

# ---------------------------------------------------------------- data


def convert(raw, out, shape):
    """raw/train/<name>.tif and _mask.tif, raw/test/<id>.tif -> out/imgs_*.npy, every image of
    `shape`. Returns (image files read, seconds)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Training pairs: one preallocated array each for images and masks, filled in directory order.
    names = os.listdir(raw / "train")
    total = len(names) // 2
    images = np.ndarray((total, *shape), dtype=np.uint8)
    masks = np.ndarray((total, *shape), dtype=np.uint8)
    i = 0
    for name in names:
        if "mask" in name:
            continue
        images[i] = np.array(Image.open(raw / "train" / name))
        masks[i] = np.array(Image.open(raw / "train" / name.replace(".tif", "_mask.tif")))
        i += 1
    np.save(out / "imgs_train.npy", images)
    np.save(out / "imgs_mask_train.npy", masks)
    del images, masks
    names = os.listdir(raw / "test")
    tests = np.ndarray((len(names), *shape), dtype=np.uint8)
    ids = np.ndarray((len(names), ), dtype=np.int32)
    for i, name in enumerate(names):
        tests[i] = np.array(Image.open(raw / "test" / name))
        ids[i] = int(name.split(".")[0])
    np.save(out / "imgs_test.npy", tests)
    np.save(out / "imgs_id_test.npy", ids)
    return 2 * total + len(names), time.perf_counter() - started


# ---------------------------------------------------------------- train


def preprocess(stack, size):
    """Each frame resized to `size` with scikit-image, one by one, kept uint8, a channel axis
    added: the tutorial's preprocess, for training and test images alike."""
    from skimage.transform import resize

    out = np.ndarray((len(stack), *size), dtype=np.uint8)
    for i in range(len(stack)):
        out[i] = resize(stack[i], size, preserve_range=True, anti_aliasing=False)
    return out[..., None]


def training_arrays(images, masks, size):
    """The arrays model.fit trains on: images standardised by their own mean and deviation,
    masks (0/1) in [0, 1], both float32 at `size`."""
    x = preprocess(images, size).astype("float32")
    x = (x - x.mean()) / x.std()
    y = preprocess(masks * 255, size).astype("float32") / 255.0
    return x, y


def fit(model, x, y, batch_size, epochs, callbacks):
    """The tutorial's training: model.fit on the NumPy arrays, shuffled every epoch."""
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=callbacks)


# ---------------------------------------------------------------- predict


def predict(arrays, work, t, shape, forward):
    """arrays/imgs_test.npy -> work/imgs_mask_test.npy at `shape`, with the weights in
    arrays/unet.weights.h5 in the kit's U-Net at the tutorial's settings `t`. The float32 forward
    pass is timed on the first `forward` images and scaled to all; the rest runs on all.
    Returns (images, seconds, the model, the images its forward pass was timed on)."""
    import cv2
    from skimage.transform import resize  # noqa: F401  (for preprocess, before the clock starts)
    from kit import model as unet

    started = time.perf_counter()
    images = np.load(arrays / "imgs_test.npy")
    x = preprocess(images, t["image_size"]).astype("float32")  # (normalised inside the model)
    model = unet.build_unet(t["image_size"], 1, 1, t["width"], t["depth"], t["dropout"],
                            t["batchnorm"], 100.0, 50.0)
    model.load_weights(arrays / "unet.weights.h5")
    n = min(forward, len(x))
    forward_started = time.perf_counter()
    probs = model.predict(x[:n], batch_size=32, verbose=0)
    forward_seconds = time.perf_counter() - forward_started
    probs = np.resize(probs, (len(x), *probs.shape[1:]))
    masks = np.ndarray((len(x), *shape), dtype=np.uint8)
    for i in range(len(probs)):
        binary = cv2.threshold(probs[i, :, :, 0], 0.5, 1.0, cv2.THRESH_BINARY)[1].astype(np.uint8)
        masks[i] = cv2.resize(binary, shape[::-1])
    np.save(work / "imgs_mask_test.npy", masks)
    seconds = time.perf_counter() - started + forward_seconds * (len(x) / n - 1)
    return len(x), seconds, model, n


# ---------------------------------------------------------------- submission


def run_length(mask):
    """The tutorial's encoder: indices of the set pixels of the transposed mask, cut where they
    jump, pairs built as Python lists; under 10 pixels counts as empty."""
    on = np.where(mask.T.flatten() > 0)[0]
    if len(on) < 10:
        return ""
    cuts = np.where(np.diff(on) > 1)[0]
    starts = np.insert(on[cuts + 1], 0, on[0])
    ends = np.append(on[cuts], on[-1])
    pairs = [[s + 1, e - s + 1] for s, e in zip(list(starts), list(ends))]
    return " ".join(str(n) for n in itertools.chain.from_iterable(pairs))


def submission(arrays, csv):
    """arrays/imgs_mask_test.npy and imgs_id_test.npy -> the CSV, rows sorted by id.
    Returns (masks encoded, seconds)."""
    started = time.perf_counter()
    ids = np.load(arrays / "imgs_id_test.npy")
    masks = np.load(arrays / "imgs_mask_test.npy")
    order = np.argsort(ids)
    ids, masks = ids[order], masks[order]
    rles = [run_length(mask) for mask in masks]
    with open(csv, "w") as f:
        f.write("img,pixels\n")
        for i, rle in zip(ids, rles):
            f.write(f"{i},{rle}\n")
    return len(ids), time.perf_counter() - started
