"""Linear probe of a frozen checkpoint's vision tokens: do they place the target relative to the hand?

    actdistill probe --policy results/checkpoints/teacher-simpler --data data/simpler-s1 --samples 3000
    actdistill probe --policy runs/train/deep --data data/simpler-s1/simpler_google --target objects --by task

Needs demonstrations recorded with the privileged state (``expert_target``, ``objects``; actdistill demos
stores them on the SIMPLER-style suites). Prints, per task, the cross-validated error (cm) and R^2 of a ridge
regression from the vision tokens, the proprio, and both, to the target minus the hand (folds by episode).
"""

from __future__ import annotations

from harness.commands import out_file, set_threads, write_json

HELP = "linear probe: do a checkpoint's vision tokens place the target?"


def add_arguments(parser) -> None:
    from distill.probe import TARGETS

    parser.add_argument("--policy", required=True, help="checkpoint folder (teacher or student)")
    parser.add_argument("--data", nargs="+", required=True, help="demonstration folders with privileged state")
    parser.add_argument("--target", default="expert_target", choices=list(TARGETS),
                        help="expert_target: the expert's waypoint minus the hand; objects: the first scene "
                             "entity minus the hand (default expert_target)")
    parser.add_argument("--samples", type=int, default=3000, help="evenly spaced samples (default 3000)")
    parser.add_argument("--by", default="task", choices=["task", "suite"], help="grouping (default task)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, type=out_file, help="also write the rows to this JSON file")


def run(args) -> int:
    from distill.probe import format_probe, probe

    set_threads(args.threads)
    rows = probe(args.policy, args.data, target=args.target, samples=args.samples, by=args.by)
    print(format_probe(rows))
    write_json(args.json, rows)
    return 0
