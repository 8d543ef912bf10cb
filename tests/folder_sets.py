"""Tiny generated data sets in the layouts people bring: image and mask folders, DSB folders."""

import cv2
import numpy as np
from PIL import Image


def scene(rng, h, w, classes=1):
    """A textured image with bright discs (class 1) and, for more classes, dark squares
    (class 2) and mid-grey rings (class 3), with its label mask."""
    image = cv2.GaussianBlur(rng.normal(120, 30, (h, w)).astype(np.float32), (0, 0), 2)
    mask = np.zeros((h, w), np.uint8)
    r = max(3, min(h, w) // 8)
    for c in range(1, classes + 1):
        y, x = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
        if c == 1:
            cv2.circle(mask, (x, y), r, 1, -1)
        elif c == 2:
            mask[y - r:y + r, x - r:x + r] = np.where(mask[y - r:y + r, x - r:x + r] == 0, 2,
                                                      mask[y - r:y + r, x - r:x + r])
        else:
            ring = np.zeros_like(mask)
            cv2.circle(ring, (x, y), r, 1, max(2, r // 3))
            mask[(ring > 0) & (mask == 0)] = c
    image[mask == 1] += 90
    image[mask == 2] -= 90
    image[mask == 3] = 200
    return np.clip(image, 0, 255).astype(np.uint8), mask


def save_mask(path, labels, classes):
    """Binary masks as 0/255 grayscale, label masks as palette PNGs (their colours are not the
    labels)."""
    if classes == 1:
        cv2.imwrite(str(path), labels * 255)
        return
    image = Image.fromarray(labels, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 4) * 3)
    image.save(path)


def write_pairs(images_dir, masks_dir, sizes, classes=1, suffix="", extensions=(".png", ), seed=0,
                names=None):
    """One image and mask per size; image formats cycle through `extensions`. Returns the stems."""
    rng = np.random.default_rng(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    names = names or [f"img{i}" for i in range(len(sizes))]
    for i, (name, (h, w)) in enumerate(zip(names, sizes)):
        image, labels = scene(rng, h, w, classes)
        cv2.imwrite(str(images_dir / (name + extensions[i % len(extensions)])), image)
        save_mask(masks_dir / f"{name}{suffix}.png", labels, classes)
    return names


def read_gray(path):
    return np.asarray(Image.open(path).convert("L"))


def read_labels(path):
    return np.asarray(Image.open(path))
