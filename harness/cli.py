"""``actdistill`` command line. Each verb lives in ``harness/commands/<verb>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; verbs are imported only
when called, so e.g. ``actdistill report`` never imports a simulator.

    actdistill eval --policy expert --suite simpler_widowx --episodes 10 --out runs/expert
    actdistill demos --suite simpler_widowx --episodes 50 --out data/widowx
    actdistill bench env --suite simpler_google
"""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS = {
    "eval": "harness.commands.eval",
    "demos": "harness.commands.demos",
    "bench": "harness.commands.bench",
    "train-teacher": "harness.commands.train_teacher",
    "latency": "harness.commands.latency",
    "distill": "harness.commands.distill",
    "regress": "harness.commands.regress",
    "report": "harness.commands.report",
    "convert": "harness.commands.convert",
    "fit": "harness.commands.fit",
    "compare": "harness.commands.compare",
}


def _available_verbs() -> dict[str, str]:
    found = {}
    for verb, mod in VERBS.items():
        if importlib.util.find_spec(mod) is not None:
            found[verb] = mod
    return found


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbs = _available_verbs()
    parser = argparse.ArgumentParser(prog="actdistill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    # Only the chosen verb's module is imported; the others are listed by name.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for verb, mod in verbs.items():
        if verb == chosen:
            module = importlib.import_module(mod)
            p = sub.add_parser(verb, help=module.HELP, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(verb, add_help=False)
    if chosen is not None and chosen not in verbs:
        parser.error(f"unknown verb {chosen!r}; valid verbs: {', '.join(verbs)}")
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"actdistill {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
