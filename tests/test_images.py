"""kit/images.py on small files written here: reading images and masks of every kind, the label
table, resizing stacks of mixed sizes, and the masks written back as PNGs."""

import cv2
import numpy as np
import pytest
from PIL import Image

from kit import images
from kit.files import UserError


def test_colour_images_become_gray_or_stay_rgb_in_rgb_order(tmp_path):
    bgr = np.zeros((6, 8, 3), np.uint8)
    bgr[..., 0], bgr[..., 2] = 30, 200  # OpenCV's order: blue 30, red 200
    bgr[2:4, 2:6, 1] = 120
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), bgr)
    rgb = images.read_image(path, channels=3)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, bgr[..., ::-1])  # red first
    gray = images.read_image(path)
    assert gray.shape == (6, 8) and np.array_equal(gray, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "g.png"), np.full((5, 7), 77, np.uint8))
    assert (images.read_image(tmp_path / "g.png", channels=3) == 77).all()  # gray replicated
    assert images.image_size(path) == (6, 8)  # from the header


def test_files_that_are_not_what_they_say_are_one_line_errors(tmp_path):
    fake = tmp_path / "1.tif"
    fake.write_bytes(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    with pytest.raises(UserError, match="is not a TIFF file"):
        images.read_image(fake)
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.full((4, 4), 1000, np.uint16))
    with pytest.raises(UserError, match="not 8-bit"):
        images.read_image(deep)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(UserError, match="cannot be decoded") as error:
        images.read_image(broken)
    assert "\n" not in str(error.value)


def test_the_label_table_maps_what_masks_may_hold_and_refuses_the_rest():
    binary = images.label_table(1)
    assert binary[0] == 0 and binary[1] == 1 and binary[255] == 1  # 0/1 and 0/255 masks
    assert (binary[2:255] == images.FORBIDDEN).all()
    labels = images.label_table(3)
    assert labels[:4].tolist() == [0, 1, 2, 3] and labels[255] == images.FORBIDDEN
    remapped = images.label_table(1, ["0:1", "255:0"])  # membranes marked 0: inverted
    assert remapped[0] == 1 and remapped[255] == 0
    with pytest.raises(UserError, match="FROM:TO with integers"):
        images.label_table(1, ["a:b"])
    with pytest.raises(UserError, match="TO a class 0..2"):
        images.label_table(2, ["7:3"])


def test_instance_masks_merge_and_bad_masks_are_refused(tmp_path):
    a, b = np.zeros((10, 12), np.uint8), np.zeros((10, 12), np.uint8)
    a[1:4, 1:4], b[3:8, 5:9] = 255, 255
    for name, mask in (("a.png", a), ("b.png", b)):
        cv2.imwrite(str(tmp_path / name), mask)
    table = images.label_table(1)
    merged = images.read_mask([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "x.png",
                              (10, 12), table)
    assert np.array_equal(merged, ((a > 0) | (b > 0)).astype(np.uint8))
    assert not images.read_mask([], tmp_path / "x.png", (10, 12), table).any()  # no masks: empty
    with pytest.raises(UserError, match="is 12x10 but its image x.png is 14x10"):
        images.read_mask([tmp_path / "a.png"], tmp_path / "x.png", (10, 14), table)
    grey = a.copy()
    grey[0, 0] = 128
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    with pytest.raises(UserError, match=r"grey.png is not a binary mask \(values \[128\]"):
        images.read_mask([tmp_path / "grey.png"], tmp_path / "x.png", (10, 12), table)
    colour = np.dstack([a, a // 2, a])
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(UserError, match="is a colour mask"):
        images.read_mask([tmp_path / "colour.png"], tmp_path / "x.png", (10, 12), table)


def test_palette_masks_are_read_as_their_indices(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 2:5], labels[6:, :] = 1, 2
    image = Image.fromarray(labels, "P")
    image.putpalette([0, 0, 0, 250, 10, 10, 10, 10, 250] + [0] * (256 * 3 - 9))
    image.save(tmp_path / "p.png")
    got = images.read_mask([tmp_path / "p.png"], tmp_path / "x.png", (8, 8), images.label_table(2))
    assert np.array_equal(got, labels)  # indices, not the palette's colours


def test_resize_stack_crops_and_places_each_image_at_its_own_size():
    canvas = np.zeros((2, 8, 10), np.uint8)
    canvas[0, :4, :6] = 200  # image 0 is 4x6, filling its part of the canvas
    canvas[1, :8, :10] = 50  # image 1 is the whole 8x10
    sizes = np.array([[4, 6], [8, 10]])
    resized = images.resize_stack(canvas, (4, 5), "area", crop=sizes)
    assert resized.shape == (2, 4, 5) and (resized[0] == 200).all() and (resized[1] == 50).all()
    placed = images.resize_stack(resized, (8, 10), "nearest", place=sizes)
    assert placed.shape == (2, 8, 10)
    assert (placed[0, :4, :6] == 200).all()
    assert not placed[0, 4:].any() and not placed[0, :, 6:].any()  # zero around it
    assert (placed[1] == 50).all()


def test_masks_are_saved_as_pngs_at_their_images_sizes(tmp_path):
    masks = np.zeros((2, 6, 8), np.uint8)
    masks[0, 1:3, 1:4] = 1
    masks[1, 4:, 6:] = 2
    images.save_pngs(tmp_path / "binary", masks[:1], ["a"], None, binary=True)
    assert set(np.unique(cv2.imread(str(tmp_path / "binary/a.png"), 0))) == {0, 255}
    images.save_pngs(tmp_path / "labels", masks, [1, 2], np.array([[3, 4], [6, 8]]), binary=False)
    small = cv2.imread(str(tmp_path / "labels/1.png"), cv2.IMREAD_UNCHANGED)
    assert small.shape == (3, 4) and np.array_equal(small, masks[0, :3, :4])
    assert np.array_equal(cv2.imread(str(tmp_path / "labels/2.png"), cv2.IMREAD_UNCHANGED),
                          masks[1])
