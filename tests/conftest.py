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
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
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
    run_script("data.py", "--demo", "--demo-size", 84, 116, "--demo-subjects", 5, "--raw", raw, "--workdir", work, "-q")
    return raw, work
