import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def run_script(script, *args, check=True, env=None):
    """Run one of the kit's scripts as a user would, from the project root.
    env: its whole environment (default: this one, outside any Kaggle notebook)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "KAGGLE_KERNEL_RUN_TYPE"}
    env = {**env, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def shared(*parts):
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available ({path})")
    return path


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A tiny demo competition converted to arrays: (raw, work)."""
    base = tmp_path_factory.mktemp("demo")
    raw, work = base / "raw", base / "work"
    run_script("data.py", "--demo", "--demo-size", 84, 116, "--demo-subjects", 5, "--raw", raw,
               "--workdir", work, "-q")
    return raw, work


@pytest.fixture(scope="session")
def trained_demo(demo, tmp_path_factory):
    """The demo competition with tiny models trained on each of 3 folds for 2 epochs and the test
    set predicted, in a workdir of its own: (raw, work, train.py's stdout)."""
    import shutil

    raw, arrays = demo
    work = tmp_path_factory.mktemp("trained") / "work"
    work.mkdir()
    for name in ("imgs_train", "imgs_mask_train", "imgs_subject_train", "imgs_test",
                 "imgs_id_test"):
        shutil.copy(arrays / f"{name}.npy", work)
    trained = run_script("train.py", "--raw", raw, "--workdir", work, "--image-size", 32, 48,
                         "--width", 4, "--depth", 2, "--folds", 3, "--fold", "all", "--epochs", 2,
                         "--batch-size", 8)
    run_script("predict.py", "--raw", raw, "--workdir", work, "-q")
    return raw, work, trained.stdout


@pytest.fixture
def stub():
    """A stand-in Kaggle server on 127.0.0.1 (tests/kaggle_stub.py), stopped after the test."""
    from kaggle_stub import KaggleStub

    with KaggleStub() as s:
        yield s


@pytest.fixture
def env(tmp_path, stub):
    """The environment of a user with Kaggle credentials whose client talks to the stub."""
    from kaggle_stub import user_env

    return user_env(tmp_path, stub.url)
