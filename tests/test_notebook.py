"""Inside a Kaggle notebook (KAGGLE_KERNEL_RUN_TYPE set), on a faked /kaggle tree in a temporary
folder: the scripts find the competition under the input folder, read it in place, write to the
working folder and never touch the network; the bundled kernel runs the four steps there; and
`make kaggle-push` pushes it. Every http request would reach the stand-in server, which must see
none from a notebook."""

import ast
import base64
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_script
from kit.rle import read_submission, rle_decode

sys.path.insert(0, str(Path(__file__).parent))  # for kaggle_stub, whatever pytest's import mode
from kaggle_stub import USER, competition_zip, tiny_competition, user_env  # noqa: E402

pytestmark = pytest.mark.slow  # every test here runs a script or make (tests/conftest.py)

SLUG = "ultrasound-nerve-segmentation"
LAYOUTS = [SLUG, f"competitions/{SLUG}"]  # both are mounted in the wild


@pytest.fixture
def notebook(tmp_path, stub):
    """(env, input folder, working folder) of a notebook that has Kaggle credentials at hand."""
    input_dir, working = tmp_path / "kaggle" / "input", tmp_path / "kaggle" / "working"
    input_dir.mkdir(parents=True)
    working.mkdir()
    env = user_env(tmp_path, stub.url)
    env.update(KAGGLE_KERNEL_RUN_TYPE="Interactive", KIT_KAGGLE_INPUT=str(input_dir),
               KIT_KAGGLE_WORKING=str(working))
    return env, input_dir, working


def write_tree(folder, files):
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def snapshot(folder):
    """Every path under folder with its size and modification time: any write shows."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_data_reads_the_input_in_place(notebook, stub, layout):
    env, input_dir, working = notebook
    write_tree(input_dir / "some-other-dataset",
               {"train.csv": b"a,b\n"})  # attached data to look past
    write_tree(input_dir / layout, tiny_competition())
    before = snapshot(input_dir)
    result = run_script("data.py", "--download", env=env)
    assert "in a Kaggle notebook: not downloading" in result.stdout
    assert np.load(working / "imgs_train.npy").shape == (6, 20, 28)
    assert np.load(working / "imgs_id_test.npy").tolist() == [1, 2, 3]
    assert snapshot(input_dir) == before and stub.requests == []


def read_zip(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_zipped_input_is_extracted_into_working(notebook, stub):
    env, input_dir, working = notebook
    nested = competition_zip(tiny_competition(), nested=True)  # train.zip, test.zip, ... as mounted
    write_tree(input_dir, {f"{SLUG}/{name}": data for name, data in read_zip(nested).items()})
    before = snapshot(input_dir)
    for _ in range(2):  # the second run finds the extracted files
        run_script("data.py", "-q", env=env)
    assert sorted(p.name
                  for p in (working / "raw" / "test").iterdir()) == ["1.tif", "2.tif", "3.tif"]
    assert np.load(working / "imgs_train.npy").shape == (6, 20, 28)
    assert snapshot(input_dir) == before and stub.requests == []


def test_no_competition_attached(notebook, stub):
    env, input_dir, working = notebook
    result = run_script("data.py", "--download", check=False, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no competition files in ")
    assert "Add Input" in result.stderr and stub.requests == []


def test_submission_stays_offline(notebook, stub):
    env, input_dir, working = notebook
    masks = np.zeros((3, 20, 28), np.uint8)
    masks[1, 4:8, 5:9] = 1
    np.save(working / "imgs_test.npy", np.zeros_like(masks))
    np.save(working / "imgs_mask_test.npy", masks)
    np.save(working / "imgs_id_test.npy", np.array([1, 2, 3], np.int32))
    result = run_script("submission.py", "--submit", "-m", "x", env=env)
    assert "in a Kaggle notebook: not uploading" in result.stdout
    rows = read_submission(working / "submission.csv", (20, 28), [1, 2, 3])
    assert [rle_decode(rows[i], (20, 28)).sum() for i in (1, 2, 3)] == [0, 16, 0]
    scores = run_script("submission.py", "--scores", check=False, env=env)
    assert scores.returncode == 2 and scores.stderr.startswith("error: --scores needs Kaggle's API")
    assert stub.requests == []


# ---------------------------------------------------------------- the kernel


def test_bundled_kernel_runs_the_four_steps(notebook, stub, tmp_path):
    env, input_dir, working = notebook
    competition = input_dir / "competitions" / SLUG
    run_script("data.py", "--demo", "--demo-size", 42, 58, "--demo-subjects", 3, "--raw",
               competition, "--workdir", tmp_path / "scratch", "-q")
    build = tmp_path / "build"
    subprocess.run([sys.executable, ROOT / "kernel" / "bundle.py", build, "--user", USER],
                   check=True, capture_output=True)
    before = snapshot(input_dir)

    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # the kernel brings its own kit
    (tmp_path / "tmp").mkdir()
    env.update(
        KAGGLE_KERNEL_RUN_TYPE="Batch", TMPDIR=str(tmp_path / "tmp"),
        KIT_TRAIN_ARGS="--epochs 1 --image-size 32 48 --width 4 --depth 2 --folds 2 --batch-size 8")
    result = subprocess.run([sys.executable, build / "kernel.py"], cwd=working, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("data.py", "train.py --time-limit 7200 --epochs 1", "predict.py", "submission.py"):
        assert f"$ python {step}" in result.stdout

    ids = sorted(int(p.stem) for p in (competition / "test").glob("*.tif"))
    assert len(read_submission(working / "submission.csv", (42, 58), ids)) == len(ids) == 40
    assert json.loads((working / "model" / "config.json").read_text())["folds"] == ["fold0.keras"]
    assert not list(working.glob("imgs_*.npy"))  # the big arrays are not left in the output
    assert snapshot(input_dir) == before and stub.requests == []
    assert list((tmp_path / "tmp").iterdir()) == []  # its unpacked kit is gone


def test_bundle_leaves_the_notebook_half_behind(tmp_path):
    """The bundle carries the four steps and kit/*.py, nothing from kernel/: pushing, following
    and fetching (kernel/kernels_api.py) run on the user's machine, and no kit module defines
    them any more."""
    build = tmp_path / "build"
    subprocess.run([sys.executable, ROOT / "kernel" / "bundle.py", build, "--user", USER],
                   check=True, capture_output=True)
    (kit, ) = re.findall(r'\nKIT = "([^"]+)"', (build / "kernel.py").read_text())
    files = read_zip(base64.b64decode(kit))
    steps = ["data.py", "train.py", "predict.py", "submission.py"]
    assert sorted(files) == sorted(steps + [f"kit/{p.name}" for p in (ROOT / "kit").glob("*.py")])
    notebook_half = {
        name for node in ast.parse((ROOT / "kernel" / "kernels_api.py").read_text()).body
        for name in defined(node)}
    assert {"push_kernel", "kernel_status", "kernel_output", "MACHINE_SHAPES"} <= notebook_half
    for name, source in files.items():
        tree = ast.parse(source)
        assert not notebook_half & {n for node in tree.body for n in defined(node)}, name
        assert not any("kernel" in module for module in imported(tree)), name


def defined(node):
    """The names a module-level statement defines."""
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    return []


def imported(tree):
    """The modules a module imports, lazily or not."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or ""


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_kaggle_push(tmp_path, stub):
    """`make kaggle-push` bundles the kernel and pushes it with the kaggle command-line client."""
    env = user_env(tmp_path, stub.url)  # the owner comes from these credentials
    build = tmp_path / "build"
    kaggle = f"{sys.executable} -m kaggle"
    result = subprocess.run([
        "make", "-s", "-o", ".venv/.installed", "kaggle-push", f"PY={sys.executable}",
        f"KAGGLE={kaggle}", f"KERNEL={build}"
    ], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (pushed, ) = stub.kernels
    assert pushed["slug"] == f"{USER}/unet-starter-kit"
    assert pushed["text"] == (build / "kernel.py").read_text()
    assert pushed["competitionDataSources"] == [SLUG]
    assert pushed["enableGpu"] is True and pushed.get("enableInternet", False) is False
    assert (pushed["language"], pushed["kernelType"]) == ("python", "script")
    assert 'KIT = ""' not in pushed["text"] and '\nKIT = "' in pushed["text"]
