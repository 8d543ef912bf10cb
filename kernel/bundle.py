"""Build the folder that `kaggle kernels push` uploads: kernel.py with the kit inside, and its
metadata.

    python kernel/bundle.py build/kernel                  # owner: the credentials' user
    python kernel/bundle.py build/kernel --user NAME      # no credentials needed

`make kaggle-push` runs this, then `kaggle kernels push -p build/kernel`;
`make kaggle-run` (kernel/run.py) calls build() itself.
"""

import argparse
import base64
import io
import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from kit import cli  # noqa: E402
from kit.files import UserError, atomic_path  # noqa: E402

STEPS = ("data.py", "train.py", "predict.py", "submission.py")  # what the notebook runs


def kit_base64():
    """The four steps and their library as a zip in base64, byte-identical from one build to
    the next. Nothing from kernel/ goes in: run.py and kernels_api.py (push, follow, fetch)
    run on the user's machine, never in the notebook."""
    buf = io.BytesIO()
    files = [ROOT / step for step in STEPS] + sorted((ROOT / "kit").glob("*.py"))
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in files:
            name = path.relative_to(ROOT).as_posix()
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), path.read_bytes(),
                       compress_type=zipfile.ZIP_DEFLATED)
    return base64.b64encode(buf.getvalue()).decode()


def kaggle_username():
    from kit import kaggle_api

    user = kaggle_api.username()
    if not user:
        raise UserError("the Kaggle credentials do not name their user: pass --user NAME "
                        "(make kaggle-push or kaggle-run KAGGLE_USER=NAME)")
    return user


def build(out, user, slug=None, settings=None):
    """Write kernel.py (the kit inside) and kernel-metadata.json into `out`; return the
    notebook's id, user/slug. slug: None keeps kernel-metadata.json's; settings: metadata
    fields to override (kernel/run.py: the accelerator)."""
    source = (HERE / "kernel.py").read_text()
    if source.count('\nKIT = ""') != 1:
        raise UserError(f'{HERE / "kernel.py"} lost its `KIT = ""` line: restore it')
    meta = json.loads((HERE / "kernel-metadata.json").read_text())
    if slug and slug != meta["id"].split("/")[-1]:
        # Kaggle names a new notebook after its title: a title that slugifies to another
        # slug would create a notebook other than the one pushed to and followed.
        meta["title"] = slug.replace("-", " ")
    meta["id"] = f"{user}/{slug or meta['id'].split('/')[-1]}"
    meta.update(settings or {})

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / meta["code_file"]) as tmp:
        tmp.write_text(source.replace('\nKIT = ""', f'\nKIT = "{kit_base64()}"', 1))
    with atomic_path(out / "kernel-metadata.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return meta["id"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write kernel.py and kernel-metadata.json into")
    p.add_argument("--user",
                   help="Kaggle username that will own the notebook (None: the credentials' user)")
    args = p.parse_args()
    kernel = build(args.out, args.user or kaggle_username())
    print(f"{args.out / 'kernel.py'} ({kernel}) ready to push")


if __name__ == "__main__":
    cli.run(main)
