"""Choose a training run's checkpoint on a validation draw of initial states.

    actdistill train-teacher --data data/simpler --out runs/train/teacher --keep-every 2000
    actdistill select --run runs/train/teacher --suite simpler_google --suite simpler_widowx --episodes 3
    actdistill select --run runs/train/teacher --suite simpler_google --copy-best runs/train/teacher-best

Evaluates the run's snapshots (RUN/snapshots/step-N) and its final checkpoint on the same validation draw
(--seed, default 900: no reported table uses seeds >= 100), prints each one's success with a Wilson 95%
interval and its paired difference to the final checkpoint, and writes OUT/selection.json. The best is the
highest success (a tie goes to the later step). Evaluations resume: rerun the same command after an
interruption. --copy-best copies the chosen checkpoint's config.json and weights to a folder.
"""

from __future__ import annotations

from harness.commands import out_folder, set_threads

HELP = "choose a run's checkpoint on a validation draw"


def add_arguments(parser) -> None:
    from harness.select import VALIDATION_SEED

    parser.add_argument("--run", required=True, help="training run folder (train-teacher --out)")
    parser.add_argument("--suite", action="append", required=True, help="suite to validate on (repeat for several)")
    parser.add_argument("--episodes", type=int, default=3, help="episodes per task of the default variant (default 3)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names or indices (default: all)")
    parser.add_argument("--plan", default=None, help="a sweep profile's tasks and variants instead of --episodes")
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED,
                        help=f"seed of the validation draw (default {VALIDATION_SEED}; must be >= 100)")
    parser.add_argument("--out", type=out_folder, default=None, help="evaluation folders (default runs/select/<run name>)")
    parser.add_argument("--copy-best", type=out_folder, default=None, metavar="DIR",
                        help="copy the chosen checkpoint (config.json, weights) to DIR")
    parser.add_argument("--overwrite", action="store_true", help="with --copy-best: replace a non-empty DIR")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from pathlib import Path

    from harness.select import copy_checkpoint, select_checkpoint, table

    set_threads(args.threads)
    out = args.out or str(Path("runs") / "select" / Path(args.run).name)
    result = select_checkpoint(args.run, args.suite, out=out, episodes=args.episodes, seed=args.seed,
                               plan=args.plan, tasks=[t for t in (args.tasks or "").split(",") if t] or None,
                               progress=not args.no_progress)
    print(table(result))
    print(f"[select] best: {result['best']['path']} (written to {Path(out) / 'selection.json'})")
    if args.copy_best:
        dest = copy_checkpoint(result["best"]["path"], args.copy_best, overwrite=args.overwrite)
        print(f"[select] copied to {dest}")
    return 0
