"""The starter kit as a Kaggle notebook: its four steps on the competition's data, offline.

    make kaggle-push        # bundles the kit into this script, `kaggle kernels push`es it

On Kaggle the scripts find the competition under /kaggle/input, read it in place, and write
to /kaggle/working: submission.csv (what Kaggle scores when the notebook is submitted),
model/ and preview/. Competition notebooks have no internet and cannot see this repository,
so the kit's modules travel inside this file: `make kaggle-push` fills KIT with them (a zip,
base64) and the kernel unpacks them into a temporary folder. Run from a checkout, with KIT
empty, it uses the checkout's own files.
"""

import base64
import io
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

KIT = ""  # the four steps and kit/, zipped and base64-encoded by kernel/bundle.py

# The kit's defaults, within a budget that leaves room in a Kaggle GPU session. Flags in the
# environment variable KIT_TRAIN_ARGS come after these, so they win.
TRAIN_ARGS = ["--time-limit", "7200"]


def kit_folder(scratch):
    if KIT:
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(KIT))) as z:
            z.extractall(scratch)
        return Path(scratch)
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "data.py").exists():
        sys.exit("error: this kernel.py carries no kit: build it with `make kaggle-push`")
    return checkout


def run(kit, script, *args):
    """Run one of the kit's scripts and pass its output on line by line: a notebook shows what
    its own Python prints, not what a child process writes to the inherited descriptors."""
    print(f"$ python {' '.join([script, *args])}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "30"}  # fewer progress lines
    with subprocess.Popen([sys.executable, str(kit / script), *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
        for line in child.stdout:
            if line.strip():  # a progress bar's carriage returns read as empty lines
                print(line, end="", flush=True)
    if child.returncode:
        sys.exit(f"{script} failed (exit code {child.returncode})")


def main():
    with tempfile.TemporaryDirectory(prefix="unet-kit-") as scratch:
        kit = kit_folder(scratch)
        run(kit, "data.py")
        run(kit, "train.py", *TRAIN_ARGS, *shlex.split(os.environ.get("KIT_TRAIN_ARGS", "")))
        run(kit, "predict.py")
        run(kit, "submission.py")
        sys.path.insert(0, str(kit))
        from kit import files

        if files.in_kaggle_notebook():
            # The arrays take gigabytes and data.py rebuilds them: keep the notebook's output small.
            for array in files.kaggle_working_root().glob("imgs_*.npy"):
                array.unlink()


if __name__ == "__main__":
    main()
