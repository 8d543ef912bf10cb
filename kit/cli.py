"""What every script shares on the command line: its common flags, quiet logs, one-line
errors instead of tracebacks, progress bars."""

import argparse
import errno
import gc
import logging
import os
import sys
import traceback
from pathlib import Path

from kit.files import FULL_DISK, UserError, default_raw, default_workdir

VERBOSE = False  # -v: set by setup_logging, before TensorFlow is imported
# Warnings from these packages are framework noise (deprecations, retracing notes) unless -v.
# The decoders' (PIL, tifffile) too: the kit reports a damaged file itself, in one line.
FRAMEWORKS = (r"(keras|tensorflow|tf_keras|absl|h5py|google|ml_dtypes|optree|PIL|tifffile|"
              r"matplotlib)(\.|$)")
OUT_OF_MEMORY = (
    "out of memory: lower --batch-size (train.py, predict.py), --image-size (train.py) "
    "or --chunk (predict.py), or close other programs")


def import_tensorflow():
    """Import TensorFlow with its C++ start-up messages hidden unless -v: they are printed
    before its logging is set up, so TF_CPP_MIN_LOG_LEVEL alone does not silence them."""
    if VERBOSE:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing logs too
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds each option's default to its help, unless the help says it already (a default
    that depends on other options)."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser(doc):
    """The flags every step takes; -h shows each option's default."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=DefaultsFormatter)
    p.add_argument("--raw", type=Path, default=default_raw(), help="competition files")
    p.add_argument("--workdir", type=Path, default=default_workdir(),
                   help="arrays, models, outputs")
    p.add_argument("-v", "--verbose", action="store_true", help="framework logs and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def check_folders(args):
    """--workdir and --raw must be folders: a file there would only surface later, as "File
    exists" from a mkdir or as "not found" from a read inside it."""
    for flag in ("workdir", "raw"):
        path = getattr(args, flag, None)
        if path is not None and path.is_file():
            raise UserError(f"--{flag} {path} is a file: give a folder")


def setup_logging(args):
    """Logs to stdout, short: warnings only with -q; the kit's debug lines, the frameworks'
    start-up messages, warnings and tracebacks with -v. Call it first in main(), before
    TensorFlow is imported (import_tensorflow reads it); it checks the common flags too."""
    global VERBOSE
    VERBOSE = args.verbose
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout)
    if args.verbose:  # the kit's own details; the libraries' debug logs (fonts, files) stay out
        for name in ("kit", "__main__"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    else:
        import warnings

        warnings.filterwarnings("ignore", module=FRAMEWORKS)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    check_folders(args)


def explain(e):
    """One line saying what went wrong and what to do, for the failures a user can fix."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, MemoryError) or type(e).__name__ == "ResourceExhaustedError":  # TF's, GPU too
        return OUT_OF_MEMORY
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        what = e.strerror or str(e).splitlines()[0]
        if e.errno in FULL_DISK:
            return f"{where}{what}: free some disk space, or use a --workdir on another disk"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (f"{where}{what}: use a --workdir (and --raw) you can write to, "
                    f"or fix its permissions")
        return f"{where}{what}: check the path, its permissions and the free disk space"
    return None


def run(main):
    """Run a script's main(): errors the user can fix become one line and exit code 2
    (with -v, after their traceback); nothing half-written is left behind (see
    files.atomic_path)."""
    try:
        code = main()
        # The interpreter's last garbage collection would run the finalizers of every function
        # TensorFlow traced: a minute after a long training, with nothing left to save.
        gc.freeze()
        sys.exit(code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        message = explain(e)
        if message is None:
            raise
        if VERBOSE:  # the traceback, yet the exit code scripts and docs rely on
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def progress(iterable=None, quiet=False, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=quiet, dynamic_ncols=True, **kwargs)
