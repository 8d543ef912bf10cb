"""A small synthetic competition in the real layout (data.py --demo): ultrasound-like speckle
with an elliptic "nerve" in about 40% of the frames, LZW TIFFs as Kaggle's, and the test set's
answers in test_masks/ so that the demo can print a score."""

import cv2
import numpy as np

from kit.cli import progress
from kit.files import UserError


def speckle_frame(rng, h, w, subject_texture):
    """Ultrasound-like background: layered tissue bands under multiplicative Rayleigh speckle."""
    y = np.linspace(0, 1, h)[:, None]
    bands = 0.45 + 0.15 * np.sin(2 * np.pi * (3 * y + subject_texture[0]) + 2 * np.sin(4 * y))
    tissue = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 9) * 0.8
    tissue += np.broadcast_to(bands, (h, w))
    speckle = rng.rayleigh(0.8, (h, w)).astype(np.float32)
    return np.clip(tissue * speckle * (1.1 - 0.5 * y), 0, None)


def nerve_mask(rng, h, w, center):
    cy, cx = center + rng.normal(0, 0.03, 2)
    mask = np.zeros((h, w), np.uint8)
    axes = (int(w * rng.uniform(0.06, 0.09)), int(h * rng.uniform(0.05, 0.08)))
    cv2.ellipse(mask, (int(cx * w), int(cy * h)), axes, rng.uniform(-20, 20), 0, 360, 1, -1)
    return mask


def demo_frame(rng, h, w, subject_center, texture, has_nerve):
    frame = speckle_frame(rng, h, w, texture)
    mask = nerve_mask(rng, h, w, subject_center) if has_nerve else np.zeros((h, w), np.uint8)
    if has_nerve:
        inside = mask.astype(np.float32)
        rim = cv2.dilate(mask, np.ones((9, 9), np.uint8)) - mask
        frame = frame * (1 - 0.6 * inside) + 1.2 * rim * frame.mean()
    image = np.clip(frame / np.percentile(frame, 99.5) * 230, 0, 255).astype(np.uint8)
    return image, mask


def write_tiff(path, image):
    # OpenCV writes LZW-compressed TIFFs, as the competition's files are.
    if not cv2.imwrite(str(path), image):
        raise UserError(f"cannot write {path}: check that the folder is writable")


def make_demo(raw, h, w, n_subjects, seed, quiet):
    """Subjects 1..n_subjects in train/, two more subjects' frames in test/ and test_masks/."""
    for name in ("train", "test", "test_masks"):
        if (raw / name).exists() and any((raw / name).iterdir()):
            raise UserError(f"{raw / name} already holds files: give --demo an empty --raw folder")
        (raw / name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = [(s, n) for s in range(1, n_subjects + 3) for n in range(1, 21)]
    test_id = 0
    for subject, n in progress(frames, quiet, desc="demo"):
        if n == 1:
            center, texture = rng.uniform([0.35, 0.3], [0.65, 0.7]), rng.uniform(0, 1, 1)
        image, mask = demo_frame(rng, h, w, center, texture, rng.random() < 0.4)
        if subject <= n_subjects:
            write_tiff(raw / "train" / f"{subject}_{n}.tif", image)
            write_tiff(raw / "train" / f"{subject}_{n}_mask.tif", mask * 255)
        else:
            test_id += 1
            write_tiff(raw / "test" / f"{test_id}.tif", image)
            write_tiff(raw / "test_masks" / f"{test_id}_mask.tif", mask * 255)
