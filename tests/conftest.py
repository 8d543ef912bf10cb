import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


# `make test-fast` runs `pytest -m "not slow"`: the unit tests, without the tests that run the
# scripts as subprocesses or train (pytest.ini registers the marker). A test that runs a script
# (run_script), trains for more than a step or two, or works through a competition's volume is
# marked slow: `pytestmark = pytest.mark.slow` where a whole file is, @pytest.mark.slow where a
# file mixes. One that needs the demo competition or its trained models (the demo and
# trained_demo fixtures, directly or through a fixture of its own) is marked here, and a test
# left unmarked that runs a script fails in `make test-fast` (check_marked_slow).
SLOW_FIXTURES = {"demo", "trained_demo"}
running = []  # the test being set up, run or torn down


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    running[:] = [item]  # before its fixtures, which may run scripts too


def check_marked_slow(script):
    """In a run that leaves the slow tests out, a script run by a test not marked slow fails that
    test, rather than quietly slowing down the fast lane."""
    item = running[0] if running else None
    if (item is not None and "slow" in (item.config.getoption("markexpr") or "")
            and item.get_closest_marker("slow") is None):
        pytest.fail(f"{item.nodeid} runs {script}: mark it @pytest.mark.slow (tests/conftest.py)",
                    pytrace=False)


def run_script(script, *args, check=True, env=None):
    """Run one of the kit's scripts as a user would, from the project root.
    env: its whole environment (default: this one, outside any Kaggle notebook)."""
    check_marked_slow(script)
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
