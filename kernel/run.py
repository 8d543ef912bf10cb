"""Run the kit as a Kaggle notebook from the terminal: push it, follow it, fetch its outputs.

    make kaggle-run KAGGLE_USER=<name>                 # GPU T4 x2; outputs in work/kaggle-run/
    make kaggle-run ACCELERATOR=p100 SUBMIT=1          # ... and submit its submission.csv
    python kernel/run.py --accelerator cpu --slug unet-cpu-test --poll-every 60

Bundles the kit (kernel/bundle.py), pushes it as a new version of the notebook, polls its
status, downloads its outputs (submission.csv, report.html, model/...) through Kaggle's
Kernels API (kernel/kernels_api.py) and prints the validation Dice from its
model/config.json; with --submit, submits that submission.csv (kit/kaggle_api.py) and
prints the public score. Run again while a version is queued or running: it follows that
version instead of pushing another. Ctrl-C stops the following, not the notebook.
"""

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import bundle  # noqa: E402  (beside this file)
import kernels_api  # noqa: E402  (beside this file)
from kit import cli, kaggle_api  # noqa: E402
from kit.files import COMPETITION, UserError, atomic_path  # noqa: E402

log = logging.getLogger(__name__)

FOLLOW = ("queued", "running")  # a version under way: follow it rather than push
PENDING = FOLLOW + ("new_script", )  # not finished: keep polling
CANCELLED = ("cancel_requested", "cancel_acknowledged")
LOG_TAIL = 20  # log lines shown when a version fails
SETTLE = 120  # seconds a push may still read as the last version's end
DEFAULT_SLUG = json.loads((HERE / "kernel-metadata.json").read_text())["id"].split("/")[-1]
SLUG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def get_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--user",
                   help="Kaggle username that owns the notebook (None: the credentials' user)")
    p.add_argument("--slug", default=DEFAULT_SLUG, help="the notebook's slug, the end of its URL")
    p.add_argument("--accelerator", default="t4x2",
                   help=f"one of {', '.join(kernels_api.MACHINE_SHAPES)}")
    p.add_argument("--build", type=Path, default=Path("build/kernel"),
                   help="folder the bundled notebook is written to before the push")
    p.add_argument("--out", type=Path, default=Path("work/kaggle-run"),
                   help="folder the outputs are downloaded into (replaced by each complete run)")
    p.add_argument("--poll-every", type=float, default=30, help="seconds between status checks")
    p.add_argument("--timeout", type=float, default=13 * 3600,
                   help="seconds to wait for the notebook to finish (Kaggle stops it at 12 h)")
    p.add_argument("--submit", action="store_true", help="submit its submission.csv to Kaggle")
    p.add_argument("-m", "--message", default="U-Net starter kit (Kaggle notebook)",
                   help="submission description")
    p.add_argument("--competition", default=COMPETITION, help="Kaggle competition slug")
    p.add_argument("--score-timeout", type=float, default=600,
                   help="seconds to wait for the public score")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line, warnings only")
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    cli.setup_logging(args)
    settings = kernels_api.accelerator_settings(args.accelerator)  # before any request
    if not (5 <= len(args.slug) <= 50 and SLUG.fullmatch(args.slug)):
        raise UserError(f"--slug {args.slug!r}: use 5 to 50 lower-case letters and digits, "
                        "words joined by single dashes")
    user = args.user or bundle.kaggle_username()
    kernel = f"{user}/{args.slug}"

    status, _ = kernels_api.kernel_status(kernel, missing_ok=True)
    pushed = status not in FOLLOW
    if not pushed:
        log.info(f"{kernel}: a version is already {status}: following it rather than pushing "
                 "another (it keeps the accelerator it was pushed with)")
    else:
        bundle.build(args.build, user, args.slug, settings)
        version = kernels_api.push_kernel(args.build, settings["machine_shape"])
        log.info(f"pushed {kernel} version {version or '?'} ({args.accelerator}): "
                 f"{kernels_api.NOTEBOOK_URL.format(kernel)}")

    status, reason = follow(kernel, args.poll_every, args.timeout, args.quiet, pushed)
    if status != "complete":
        report_failure(kernel, status, reason, args.out)
    dice = fetch_outputs(kernel, args.out)
    print(f"validation Dice: {dice:.4f}")
    if args.submit:
        # Scoring takes seconds to minutes, not the hours a notebook runs: poll it more often.
        poll_every = min(args.poll_every, 10)
        score = kaggle_api.submit(args.competition, args.out / "submission.csv", args.message,
                                  timeout=args.score_timeout, poll_every=poll_every,
                                  quiet=args.quiet)
        print(f"public score: {score}")


def follow(kernel, poll_every, timeout, quiet, pushed):
    """Poll the notebook's status until its latest version ends: (status, failure message).
    pushed: a version was just pushed, so an end seen before it was ever queued or running
    may be the previous version's, until SETTLE seconds have passed."""
    started = time.monotonic()
    line = ProgressLine(kernel, quiet)
    seen_pending = not pushed
    try:
        while True:
            status, reason = kernels_api.kernel_status(kernel)
            elapsed = time.monotonic() - started
            seen_pending = seen_pending or status in PENDING
            settled = seen_pending or elapsed >= SETTLE
            line.show(status if settled else "waiting for the new version", elapsed)
            if status not in PENDING and settled:
                return status, reason
            if elapsed >= timeout:
                raise UserError(f"notebook {kernel} was still {status} after {clock(elapsed)}")
            time.sleep(poll_every)
    except UserError as e:
        raise UserError(f"{e}; it carries on on Kaggle: run this again to follow it") from None
    except KeyboardInterrupt:
        line.end()  # before the warning, not after it
        log.warning(f"stopped following {kernel}; it carries on on Kaggle: "
                    "run this again to follow it")
        raise
    finally:
        line.end()


class ProgressLine:
    """The status and the time elapsed, on one line rewritten in place on a terminal;
    elsewhere (a pipe, a log file) a line each time the status changes."""

    def __init__(self, kernel, quiet):
        self.kernel, self.quiet, self.tty = kernel, quiet, sys.stdout.isatty()
        self.last, self.width = None, 0

    def show(self, status, elapsed):
        text = f"{self.kernel}: {status.replace('_', ' ')}, {clock(elapsed)} elapsed"
        if self.quiet:
            return
        if self.tty:
            sys.stdout.write("\r" + text.ljust(self.width))
            sys.stdout.flush()
            self.width = len(text)
        elif status != self.last:
            print(text, flush=True)
        self.last = status

    def end(self):
        if self.width:  # leave the last state on screen, end its line
            print(flush=True)
            self.width = 0


def clock(seconds):
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


def report_failure(kernel, status, reason, out):
    """A version that ended without completing: the tail of its log, then one line."""
    try:
        log_text = kernels_api.kernel_log(kernel)
    except UserError as e:
        log_text = ""
        log.warning(f"warning: could not fetch the notebook's log: {e}")
    lines = kernels_api.log_lines(log_text)
    where = ""
    if lines:
        print(f"last lines of the log of {kernel}:", file=sys.stderr)
        for line in lines[-LOG_TAIL:]:
            print(f"  | {line}", file=sys.stderr)
        # Beside `out`, not in it: the outputs of an earlier complete run stay as they were.
        log_path = out.parent / f"{out.name}-failed.log"
        with atomic_path(log_path) as tmp:
            tmp.write_text(log_text)
        where = f"log above and in {log_path}; "
    if status in CANCELLED:
        what = "was cancelled"
    elif status == "error":
        what = f"failed ({reason or 'Kaggle gave no reason'})"
    else:
        what = f"ended with status {status}"
    raise UserError(f"notebook {kernel} {what} on Kaggle: {where}"
                    f"see {kernels_api.NOTEBOOK_URL.format(kernel)}, then run this again")


def fetch_outputs(kernel, out):
    """Download the outputs into `out`; return the validation Dice from its model/config.json."""
    names, _ = kernels_api.kernel_output(kernel, out)
    log.info(f"{len(names)} output files of {kernel} downloaded into {out}")
    for name in ("submission.csv", "report.html"):
        if name not in names:
            log.warning(f"warning: the notebook left no {name}")
    config = out / "model" / "config.json"
    try:
        dice = json.loads(config.read_text())["validation_dice"]
    except FileNotFoundError:
        raise UserError(f"notebook {kernel} completed but left no model/config.json: "
                        f"see its log in {out}") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{config} is not JSON with a validation_dice: see the notebook's log "
                        f"in {out}") from None
    if not isinstance(dice, (int, float)) or isinstance(dice, bool):
        raise UserError(f"{config}: validation_dice is {dice!r}, not a number")
    return float(dice)


if __name__ == "__main__":
    cli.run(main)
