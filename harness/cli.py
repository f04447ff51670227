"""``actdistill``: the command line. Each verb is a module with ``HELP``, ``add_arguments`` and ``run``
(:mod:`harness.commands`); only the chosen verb's module builds its options, so ``--help`` stays fast.

Errors in what the user gave (:class:`tasks.errors.UserInputError`) print one line and exit 2; any other
exception is a bug and shows its traceback.

Without a display and without ``MUJOCO_GL``, MuJoCo would try GLFW and every rendering process (each Ray
worker) would abort; :func:`headless_gl_defaults` picks EGL then, as ``run_all.sh`` does. A value the user
set is never changed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tasks.errors import UserInputError

# verb -> module, in the order --help lists them
VERBS = {
    "sweep": "harness.sweep",
    "eval": "harness.commands.eval",
    "serve": "harness.commands.serve",
    "compare": "harness.commands.compare",
    "report": "harness.commands.report",
    "regress": "harness.commands.regress",
    "latency": "harness.commands.latency",
    "demos": "harness.commands.demos",
    "dagger": "harness.commands.dagger",
    "train-teacher": "harness.commands.train_teacher",
    "select": "harness.commands.select",
    "distill": "harness.commands.distill",
    "convert": "harness.commands.convert",
    "fit": "harness.commands.fit",
    "probe": "harness.commands.probe",
    "bench": "harness.commands.bench",
    "doctor": "harness.commands.doctor",
    "gpu-run": "harness.gpu_run",
}

DESCRIPTION = """\
Evaluate, distill and compare VLA policies on LIBERO and SIMPLER-style suites (ActDistill, arXiv 2511.18082).
"""

EXAMPLES = """\
examples:
  actdistill sweep --profile smoke                 # the benchmark in minutes (bash run_all.sh runs --profile default)
  actdistill eval --policy results/checkpoints/teacher-simpler --suite simpler_google --plan default --workers 2
  actdistill distill --teacher results/checkpoints/teacher-simpler --data data/simpler --budgets 0.5 --out runs/distill
  actdistill compare --policy teacher=runs/default/teacher --policy b0.50=runs/default/student-b0.50
  actdistill report --runs runs/default/teacher runs/default/student-b0.50 --out runs/report

Run 'actdistill VERB --help' for a verb's options and more examples.
"""


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    """The parser: every verb listed with its help line; the options of ``chosen`` only (imported lazily)."""
    parser = argparse.ArgumentParser(prog="actdistill", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    for verb, name in VERBS.items():
        module = importlib.import_module(name)
        if verb == chosen:
            p = sub.add_parser(verb, help=module.HELP, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(verb, help=module.HELP, add_help=False)
    return parser


def headless_gl_defaults(environ=os.environ) -> dict[str, str]:
    """Set ``MUJOCO_GL`` and ``PYOPENGL_PLATFORM`` to ``egl`` where neither a display (``DISPLAY``,
    ``WAYLAND_DISPLAY``) nor a value of the user's is there; returns what was set. Runs before any verb
    imports MuJoCo, so Ray workers, which inherit the environment, render the same way."""
    if environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return {}
    chosen = {}
    for name in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
        if not environ.get(name):
            environ[name] = chosen[name] = "egl"
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run ``actdistill`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    headless_gl_defaults()
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in VERBS else None)
    if chosen is not None and chosen not in VERBS:
        parser.error(f"unknown verb {chosen!r}; valid verbs: {', '.join(VERBS)}")
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserInputError as exc:
        print(f"actdistill {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"actdistill {args.verb}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
