"""Bad input, script by script: one line naming the file and the fix, exit code 2, no traceback,
and nothing written: every earlier output survives byte for byte, and no new file appears."""

import hashlib
import json
import shutil
import zipfile

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_script, shared
from folder_sets import write_pairs
from test_data import make_competition


def snapshot(*folders):
    """Every file under the folders (hidden ones too) with a hash of its bytes."""
    files = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            if path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def assert_refused(result, words):
    """Exit code 2 and a single line 'error: ...' holding every one of `words`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def refused_without_writing(script, args, words, *watched):
    before = snapshot(*watched)
    result = run_script(script, *args, check=False)
    assert_refused(result, words)
    assert snapshot(*watched) == before  # nothing new, nothing changed, no temporary left behind
    return result


# ---------------------------------------------------------------- data.py


def write(path, image):
    assert cv2.imwrite(str(path), image)


def half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def real_looking(h, w, seed=0):
    """A frame like an ultrasound scan: smooth structures under speckle (LZW codes of many
    lengths, as in the competition's files)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    smooth = 110 + 50 * np.sin(x / 5.0) * np.cos(y / 7.0)
    return np.clip(smooth + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)


def blob_mask(h, w):
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 3, h // 4), 20, 0, 360, 255, -1)
    return mask


def flip_strip_bytes(path):
    """Flip two bytes of an LZW TIFF's strip data, from its middle on, at the first place that
    makes the decoder fail (a flip can also decode as valid LZW: undetectable); the header
    and tags stay intact. OpenCV still returns pixels for the file, so the kit must not rely
    on it. Returns the offset."""
    data = path.read_bytes()
    with Image.open(path) as tiff:
        assert tiff.info["compression"] == "tiff_lzw" and len(tiff.tag_v2[273]) == 1
        start, length = tiff.tag_v2[273][0], tiff.tag_v2[279][0]  # StripOffsets, ByteCounts
    for offset in range(start + length // 2, start + length - 2):
        spoiled = bytearray(data)
        spoiled[offset:offset + 2] = bytes(b ^ 0xFF for b in data[offset:offset + 2])
        path.write_bytes(spoiled)
        try:
            with Image.open(path) as tiff:
                tiff.load()
        except OSError as e:
            assert "decoder error" in str(e)
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None  # garbage, no error
            return offset
    raise AssertionError(f"no flip in the second half of {path}'s strip data fails to decode")


def damaged_lzw(path, image):
    """`image` saved as an LZW TIFF with Pillow, then damaged by flip_strip_bytes."""
    Image.fromarray(image).save(path, compression="tiff_lzw")
    return flip_strip_bytes(path)


def png_named_tif(path):
    path.write_bytes(cv2.imencode(".png", np.zeros((20, 28), np.uint8))[1])


def zip_bomb(raw):
    with zipfile.ZipFile(raw / "train.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train/1_1.tif", bytes(8 * 2**20))  # 8 MB of zeros in a few kB


def corrupt_zip(raw):
    (raw / "train.zip").write_bytes(b"PK\x03\x04" + bytes(100))


def without_folders(raw):
    shutil.rmtree(raw / "train")
    shutil.rmtree(raw / "test")


def traversal_zip(raw):
    with zipfile.ZipFile(raw / "evil.zip", "w") as z:
        z.writestr("train/1_1.tif", b"x")
        z.writestr("../../escaped.txt", b"gotcha")


DATA_CASES = {
    # name: (how to spoil a good competition in raw/, words the error must hold)
    "raw missing": (lambda raw: shutil.rmtree(raw), ["raw not found", "--download", "--demo"]),
    "raw empty": (lambda raw: without_folders(raw), ["train not found", "--download"]),
    "image without mask": (lambda raw: (raw / "train/1_2_mask.tif").unlink(),
                           ["1_2.tif has no mask 1_2_mask.tif", "--skip-unpaired"]),
    "mask without image": (lambda raw: (raw / "train/2_1.tif").unlink(),
                           ["2_1_mask.tif has no image 2_1.tif", "--skip-unpaired"]),
    "truncated tiff": (lambda raw: half(raw / "train/1_3.tif"),
                       ["1_3.tif", "corrupt or truncated", "replace it"]),
    "damaged LZW image": (lambda raw: damaged_lzw(raw / "train/1_2.tif", real_looking(20, 28)),
                          ["1_2.tif cannot be decoded", "corrupt", "replace it"]),
    "damaged LZW mask": (lambda raw: damaged_lzw(raw / "train/2_1_mask.tif", blob_mask(20, 28)),
                         ["2_1_mask.tif cannot be decoded", "corrupt", "replace it"]),
    "damaged LZW test image": (lambda raw: damaged_lzw(raw / "test/2.tif", real_looking(20, 28, 1)),
                               ["2.tif cannot be decoded", "corrupt", "replace it"]),
    "png named .tif": (lambda raw: png_named_tif(raw / "test/2.tif"),
                       ["2.tif is not a TIFF", "replace it"]),
    "empty .tif": (lambda raw:
                   (raw / "test/3.tif").write_bytes(b""), ["3.tif is not a TIFF", "replace it"]),
    "mixed sizes, test": (lambda raw: write(raw / "test/2.tif", np.zeros(
        (10, 10), np.uint8)), ["2.tif is 10x10", "share one size"]),
    "mixed sizes, train": (lambda raw: write(raw / "train/2_2.tif", np.zeros(
        (10, 10), np.uint8)), ["2_2.tif is 10x10", "share one size"]),
    "mask of another size": (
        lambda raw: write(raw / "train/1_3_mask.tif", np.zeros((10, 10), np.uint8)),
        ["1_3_mask.tif is 10x10 but", "1_3.tif is 28x20", "its image's size"]),
    "16-bit image": (lambda raw: write(raw / "train/1_1.tif", np.full(
        (20, 28), 1000, np.uint16)), ["1_1.tif is uint16", "convert it to 8-bit"]),
    "colour mask": (lambda raw: write(
        raw / "train/1_1_mask.tif",
        np.dstack([np.zeros((20, 28), np.uint8)] * 2 + [np.full(
            (20, 28), 255, np.uint8)])), ["1_1_mask.tif is a colour mask", "single-channel"]),
    "mask not binary": (lambda raw: write(raw / "train/2_2_mask.tif",
                                          np.arange(560, dtype=np.uint8).reshape(20, 28)),
                        ["2_2_mask.tif is not a binary mask", "0 and 255"]),
    "test name not an integer": (lambda raw: shutil.copy(raw / "test/1.tif", raw / "test/1a.tif"),
                                 ["1a.tif is not named <integer id>.tif"]),
    "duplicate test id": (lambda raw: shutil.copy(raw / "test/1.tif", raw / "test/01.tif"),
                          ["have the same id", "remove one"]),
    "duplicate training frame": (
        lambda raw:
        [shutil.copy(raw / f"train/1_1{m}.tif", raw / f"train/01_1{m}.tif")
         for m in ("", "_mask")], ["are the same frame", "remove one"]),
    "training name malformed": (
        lambda raw: shutil.copy(raw / "train/1_1.tif", raw / "train/scan.tif"),
        ["scan.tif is not named <subject>_<frame>.tif", "rename it"]),
    "zip bomb": (lambda raw: (without_folders(raw), zip_bomb(raw)), ["train.zip", "zip bomb"]),
    "corrupt zip": (lambda raw: (without_folders(raw), corrupt_zip(raw)),
                    ["train.zip is corrupt", "download it again"]),
    "zip path traversal": (lambda raw: (without_folders(raw), traversal_zip(raw)),
                           ["evil.zip", "outside", "refusing"])
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A good competition and the outputs of an earlier good run of data.py."""
    base = tmp_path_factory.mktemp("good")
    raw = make_competition(base / "raw")
    run_script("data.py", "--raw", raw, "--workdir", base / "work", "-q")
    return base


@pytest.mark.slow
@pytest.mark.parametrize("case", DATA_CASES)
def test_data_refuses(case, converted, tmp_path):
    spoil, words = DATA_CASES[case]
    shutil.copytree(converted, tmp_path, dirs_exist_ok=True)
    raw, work = tmp_path / "raw", tmp_path / "work"
    spoil(raw)
    refused_without_writing("data.py", ["--raw", raw, "--workdir", work, "-q"], words, tmp_path)
    assert not (tmp_path.parent / "escaped.txt").exists()


@pytest.mark.slow
def test_data_unwritable_workdir(converted, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    refused_without_writing("data.py",
                            ["--raw", converted / "raw", "--workdir", blocker / "work", "-q"],
                            [str(blocker), "check the path"], tmp_path)


@pytest.mark.slow
def test_traceback_only_with_verbose(converted, tmp_path):
    result = run_script("data.py", "--raw", tmp_path / "none", "--workdir", tmp_path / "work", "-v",
                        check=False)
    assert result.returncode == 2  # as without -v: docs/troubleshooting.md promises 2
    assert "Traceback" in result.stderr and "UserError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_truncated_jpeg(tmp_path):
    """libjpeg only warns ("Premature end of JPEG file") and OpenCV returns the frame with a flat
    grey lower half: Pillow raises, and the kit says so."""
    write_pairs(tmp_path / "img", tmp_path / "msk", [(48, 64)] * 3, extensions=(".jpg", ))
    write_pairs(tmp_path / "test", tmp_path / "test_msk", [(48, 64)], seed=1)
    jpeg = tmp_path / "img/img1.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:int(jpeg.stat().st_size * 0.6)])
    assert cv2.imread(str(jpeg), cv2.IMREAD_UNCHANGED) is not None  # what the kit used to take
    refused_without_writing("data.py", [
        "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--test-images",
        tmp_path / "test", "--workdir", tmp_path / "work", "-q"
    ], ["img1.jpg cannot be decoded", "truncated", "replace it"], tmp_path)


@pytest.mark.slow
def test_damaged_real_lzw_frame(tmp_path):
    """A frame of the real competition (../shared), damaged in the middle of its LZW data."""
    sample = shared("nerve-kaggle-sample")
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir()
    for name in ("1_1", "1_2", "2_1"):
        for suffix in ("", "_mask"):
            shutil.copy(sample / f"train/{name}{suffix}.tif", raw / "train")
    shutil.copy(sample / "test/1.tif", raw / "test")
    flip_strip_bytes(raw / "train/1_2.tif")
    refused_without_writing("data.py", ["--raw", raw, "--workdir", tmp_path / "work", "-q"],
                            ["1_2.tif cannot be decoded", "corrupt", "replace it"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["data.py", "train.py", "predict.py", "submission.py",
                                    "visualize.py"])
def test_workdir_or_raw_naming_a_file(script, tmp_path):
    blocker = tmp_path / "work.txt"
    blocker.write_text("not a folder")
    refused_without_writing(script, ["--workdir", blocker, "-q"],
                            [f"--workdir {blocker} is a file: give a folder"], tmp_path)
    refused_without_writing(script, ["--raw", blocker, "--workdir", tmp_path / "work", "-q"],
                            [f"--raw {blocker} is a file: give a folder"], tmp_path)


INTERRUPT_DURING_IMPORT = """
import os, runpy, signal, sys, threading, time
def interrupt():  # as Ctrl-C would, once TensorFlow has begun to load (it takes seconds)
    while "tensorflow" not in sys.modules:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=interrupt, daemon=True).start()
sys.argv = [sys.argv[1], "--workdir", sys.argv[2], "-q"]
sys.path.insert(0, os.getcwd())
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ctrl_c_while_tensorflow_loads(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", INTERRUPT_DURING_IMPORT, "train.py", tmp_path / "work"], cwd=ROOT,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 130, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == "interrupted"


@pytest.mark.slow
def test_colour_images_are_converted_and_said(converted, tmp_path):
    raw = make_competition(tmp_path / "raw")
    gray = cv2.imread(str(raw / "train/2_1.tif"), cv2.IMREAD_UNCHANGED)
    write(raw / "train/2_1.tif", np.dstack([gray, gray // 2, gray // 3]))
    result = run_script("data.py", "--raw", raw, "--workdir", tmp_path / "work", "-q")
    assert ("2_1.tif is a colour image" in result.stdout and
            "converted to grayscale" in result.stdout)
    images = np.load(tmp_path / "work/imgs_train.npy")
    expected = cv2.cvtColor(np.dstack([gray, gray // 2, gray // 3]), cv2.COLOR_BGR2GRAY)
    assert np.array_equal(images[3], expected)


# ---------------------------------------------------------------- train.py


def truncated_npy(work):
    half(work / "imgs_train.npy")


def pickled_npy(work):
    np.save(work / "imgs_subject_train.npy", np.array([{
        "subject": 1
    }] * 100, dtype=object), allow_pickle=True)


def fewer_masks(work):
    np.save(work / "imgs_mask_train.npy", np.load(work / "imgs_mask_train.npy")[:-3])


def leftover_backup(work, state="{}"):
    (work / "model/backup_fold0").mkdir(parents=True)
    (work / "model/backup_fold0/state.json").write_text(state)


def copy_arrays(source, work):
    """The demo's arrays only: other tests train in the shared demo folder."""
    work.mkdir(parents=True)
    for path in source.glob("*.npy"):
        shutil.copy(path, work)


TRAIN_CASES = {
    "no arrays": (lambda work: [p.unlink() for p in work.glob("*.npy")], [],
                  ["imgs_train.npy not found", "data.py"]),
    "truncated .npy": (truncated_npy, [], ["imgs_train.npy is not a readable", "python data.py"]),
    ".npy of another kind": (pickled_npy, [],
                             ["imgs_subject_train.npy is not a readable", "python data.py"]),
    ".npy from another run": (fewer_masks, [], ["do not match", "python data.py` again"]),
    "fold out of range": (lambda work: None, ["--fold", "7"], ["--fold 7", "from 0 to 2"]),
    "data.json damaged": (lambda work: (work / "data.json").write_text('{"classes": '), [],
                          ["data.json is damaged", "python data.py` again"]),
    "interrupted run, no --resume": (leftover_backup, [], [
        "backup_fold0 holds an interrupted run", "--resume", "delete that folder"
    ]),
    "damaged backup state.json": (lambda work: leftover_backup(work, '{"epoch": 3, "rec'),
                                  ["--resume"], [
                                      "backup_fold0/state.json is unreadable",
                                      "delete", "to start this fold afresh"
                                  ]),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_refuses(case, demo, tmp_path):
    spoil, extra, words = TRAIN_CASES[case]
    work = tmp_path / "work"
    copy_arrays(demo[1], work)
    spoil(work)
    refused_without_writing("train.py", [
        "--workdir", work, "--folds", 3, "--epochs", 1, "--image-size", 32, 48, "--width", 4,
        "--depth", 2, "-q", *extra
    ], words, tmp_path)


# ---------------------------------------------------------------- predict.py


def save_model(work, net, **config):
    (work / "model").mkdir(exist_ok=True)
    net.save(work / "model/fold0.keras")
    config = {"folds": ["fold0.keras"], "threshold": 0.5, "min_area": 0, "tta": False, **config}
    (work / "model/config.json").write_text(json.dumps(config))


def copy_test_arrays(demo, tmp_path_factory, name):
    """A fresh workdir holding the demo's test images and ids."""
    work = tmp_path_factory.mktemp(name) / "work"
    work.mkdir()
    for array in ("imgs_test.npy", "imgs_id_test.npy"):
        shutil.copy(demo[1] / array, work)
    return work


@pytest.fixture(scope="module")
def predict_work(demo, tmp_path_factory):
    """Test arrays, a small untrained model and an earlier imgs_mask_test.npy."""
    work = copy_test_arrays(demo, tmp_path_factory, "predict")
    images = np.load(work / "imgs_test.npy")
    small_model(work, original_size=list(images.shape[1:]))
    np.save(work / "imgs_mask_test.npy", np.zeros(images.shape, np.uint8))
    return work


def lambda_model(work, marker):
    """A model that runs code of its own when loaded without safe mode: it creates the file
    named by $KIT_TEST_MARKER (set for the scripts run by the test too)."""
    import os
    import keras

    os.environ["KIT_TEST_MARKER"] = str(marker)
    inputs = keras.Input((32, 48, 1))
    code = lambda x: (  # noqa: E731
        open(__import__("os").environ["KIT_TEST_MARKER"], "a").close(), x)[1]
    save_model(work, keras.Model(inputs, keras.layers.Lambda(code)(inputs)))
    marker.unlink()


def small_model(work, channels=1, **config):
    from kit import model as unet

    save_model(work, unet.build_unet((32, 48), channels=channels, width=4, depth=2), **config)


PREDICT_CASES = {
    "no model": (lambda work, tmp: shutil.rmtree(work / "model"),
                 ["config.json not found", "python train.py"]),
    "config damaged": (lambda work, tmp: (work / "model/config.json").write_text('{"folds": '),
                       ["config.json is damaged", "python train.py` again"]),
    "model truncated": (lambda work, tmp: half(work / "model/fold0.keras"),
                        ["fold0.keras is truncated", "python train.py` again"]),
    "model that runs code": (lambda work, tmp: lambda_model(work, tmp / "marker"),
                             ["fold0.keras cannot be loaded", "Lambda", "python train.py` again"]),
    "model of other channels": (lambda work, tmp: small_model(work, channels=3),
                                ["3 channel(s)", "imgs_test.npy"]),
    "model of another size": (lambda work, tmp: small_model(work, original_size=[420, 580]), [
        "trained on 580x420 images", "imgs_test.npy holds 116x84", "python data.py"
    ]),
    "arrays from another run": (lambda work, tmp: np.save(work / "imgs_id_test.npy", np.arange(3)),
                                ["imgs_id_test.npy disagree", "python data.py` again"])
}


@pytest.mark.parametrize("case", PREDICT_CASES)
def test_predict_refuses(case, predict_work, tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_TEST_MARKER", str(tmp_path / "marker"))
    spoil, words = PREDICT_CASES[case]
    work = tmp_path / "work"
    shutil.copytree(predict_work, work)
    spoil(work, tmp_path)
    refused_without_writing("predict.py", ["--workdir", work, "-q"], words, work)
    assert not (tmp_path / "marker").exists()  # safe mode held: the model's code never ran


def test_the_dangerous_model_is_dangerous(tmp_path, monkeypatch):
    """The fixture above really runs code when loaded unsafely: the test of safe mode can fail."""
    monkeypatch.setenv("KIT_TEST_MARKER", str(tmp_path / "marker"))
    import keras

    (tmp_path / "work").mkdir()
    lambda_model(tmp_path / "work", tmp_path / "marker")
    keras.models.load_model(tmp_path / "work/model/fold0.keras", compile=False, safe_mode=False)
    assert (tmp_path / "marker").exists()


# ---------------------------------------------------------------- submission.py


@pytest.fixture(scope="module")
def submission_work(demo, tmp_path_factory):
    """Test arrays, final masks and an earlier submission.csv."""
    work = copy_test_arrays(demo, tmp_path_factory, "submission")
    masks = np.zeros(np.load(work / "imgs_test.npy").shape, np.uint8)
    masks[:, 10:20, 30:50] = 1
    np.save(work / "imgs_mask_test.npy", masks)
    run_script("submission.py", "--workdir", work, "--raw", work / "no-raw", "-q")
    return work


def bad_csv(work, *rows, header="img,pixels"):
    ids = np.load(work / "imgs_id_test.npy")
    lines = [header] + [f"{i}," for i in ids[len(rows):]] + list(rows)
    (work / "bad.csv").write_text("\n".join(lines) + "\n")


def first_id(work):
    return int(np.load(work / "imgs_id_test.npy")[0])


def change_masks(work, change):
    np.save(work / "imgs_mask_test.npy", change(np.load(work / "imgs_mask_test.npy")))


def sample_submission(work, text):
    (work / "raw").mkdir()
    (work / "raw/sample_submission.csv").write_text(text)


SUBMISSION_CASES = {
    "no masks": (lambda work: (work / "imgs_mask_test.npy").unlink(), [],
                 ["imgs_mask_test.npy not found", "python predict.py"]),
    "masks of another size": (
        lambda work: np.save(work / "imgs_mask_test.npy", np.zeros((40, 10, 10), np.uint8)), [],
        ["imgs_mask_test.npy (shape (40, 10, 10)", "does not match", "predict.py` again"]),
    "masks fewer than ids": (lambda work: change_masks(work, lambda m: m[1:]), [],
                             ["does not match the test set", "predict.py` again"]),
    "masks not binary": (lambda work: change_masks(work, lambda m: m * 255), [],
                         ["as binary masks", "predict.py` again"]),
    "ids differ from the sample": (lambda work: sample_submission(work, "img,pixels\n1,\n2,\n"),
                                   ["--raw", "{work}/raw"
                                    ], ["differ from", "sample_submission.csv", "python data.py"]),
    "unwritable output": (lambda work: (work / "file").write_text("x"),
                          ["--output",
                           "{work}/file/submission.csv"], ["file: File exists", "check the path"]),
    "data.json damaged": (lambda work: (work / "data.json").write_text('{"classes": true}'), [],
                          ["data.json is damaged", "python data.py` again"]),
    "csv not found": (lambda work: None, ["--check", "{work}/nowhere.csv"],
                      ["nowhere.csv not found", "--check"]),
    "csv header": (lambda work: bad_csv(work, header="id,rle"), ["--check", "{work}/bad.csv"],
                   ["bad.csv: the first line must be 'img,pixels'"]),
    "csv run outside the image": (lambda work: bad_csv(work, f"{first_id(work)},9741 5"),
                                  ["--check",
                                   "{work}/bad.csv"], ["bad.csv:",
                                                       "lies outside the 116x84 image"]),
    "csv runs unsorted": (lambda work: bad_csv(work, f"{first_id(work)},50 2 10 2"),
                          ["--check", "{work}/bad.csv"], ["bad.csv:", "sorted and separated"]),
    "csv runs unpaired": (lambda work: bad_csv(work, f"{first_id(work)},50 2 10"),
                          ["--check", "{work}/bad.csv"], ["bad.csv:", "start/length pairs"]),
    "csv run of length 0": (lambda work: bad_csv(work, f"{first_id(work)},50 0"),
                            ["--check", "{work}/bad.csv"], ["bad.csv:", "is empty"]),
    "csv duplicate id": (lambda work: bad_csv(work, f"{first_id(work)},", f"{first_id(work)},1 2"),
                         ["--check", "{work}/bad.csv"], ["bad.csv:", "appears twice"]),
    "csv missing ids": (lambda work: (work / "bad.csv").write_text("img,pixels\n1,\n"),
                        ["--check",
                         "{work}/bad.csv"], ["bad.csv: ids differ from the test set", "missing ["]),
    "csv not text": (lambda work: (work / "bad.csv").write_bytes(b"img,pixels\n\xff\xfe\x00,1 2\n"),
                     ["--check", "{work}/bad.csv"], ["bad.csv:2: expected '<id>,<runs>'"])
}


@pytest.mark.parametrize("case", SUBMISSION_CASES)
def test_submission_refuses(case, submission_work, tmp_path):
    spoil, extra, words = SUBMISSION_CASES[case]
    work = tmp_path / "work"
    shutil.copytree(submission_work, work)
    spoil(work)
    args = [
        "--workdir", work, "-q", "--raw", work / "no-raw", *[a.format(work=work) for a in extra]
    ]
    refused_without_writing("submission.py", args, words, work)


def test_submission_check_accepts_a_good_csv(submission_work, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(submission_work, work)
    shutil.copy(work / "submission.csv", work / "mine.csv")
    before = snapshot(work)
    result = run_script("submission.py", "--workdir", work, "--raw", work / "no-raw", "--check",
                        work / "mine.csv")
    assert f"in {work / 'mine.csv'}" in result.stdout
    assert snapshot(work) == before


def test_verbose_shows_the_kits_details_not_the_libraries_debug_logs():
    import argparse
    import logging

    from kit import cli
    root = logging.getLogger()
    before = root.level, root.handlers[:]
    root.handlers[:] = []  # as a script starts: nothing configured yet
    try:
        cli.setup_logging(argparse.Namespace(quiet=False, verbose=True))
        assert logging.getLogger("kit.training").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("__main__").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]
        for name in ("kit", "__main__"):
            logging.getLogger(name).setLevel(logging.NOTSET)
