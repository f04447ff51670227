"""Offline fit of checkpoints on demonstrations, per suite or task, with the router and with static layers.

    actdistill fit --policy results/checkpoints/student-libero-b0.50 --data data/libero
    actdistill fit --policy results/checkpoints/teacher-simpler --data data/simpler-s1 --by task \\
        --images real,zero,swap                      # does the policy read its cameras at all?
    actdistill fit --policy results/checkpoints/teacher-simpler results/checkpoints/student-simpler-b0.50 \\
        --data data/simpler-s1 --by task --samples 512 --json runs/fit.json

Prints a markdown table: per checkpoint and group, the mean squared error of the normalised action chunk
against the demonstrations under each layer mask (routed: the student's router; all: every layer;
first/last: the first/last k layers, k the student's layers per input), and which layers the router ran.
A group where "routed" is worse than "first" has a router that picks worse layers than a static choice.
This reads training data: it measures fit, not success (use actdistill eval for that).
"""

from __future__ import annotations

from harness.commands import out_file, set_threads, write_json

HELP = "offline action error under the router and static masks"


def add_arguments(parser) -> None:
    from distill.diagnose import GROUPS, IMAGES, MASKS

    parser.add_argument("--policy", nargs="+", required=True, help="checkpoint folder(s), teacher or student")
    parser.add_argument("--data", nargs="+", required=True, help="demonstration folder(s) (from actdistill demos)")
    parser.add_argument("--samples", type=int, default=256,
                        help="evenly spaced samples read from the data (default 256)")
    parser.add_argument("--by", default="suite", choices=list(GROUPS), help="grouping (default suite)")
    parser.add_argument("--masks", default=",".join(MASKS),
                        help=f"comma-separated layer masks (default {','.join(MASKS)})")
    parser.add_argument("--images", default="real",
                        help=f"comma-separated camera inputs: {', '.join(IMAGES)} (zero: black frames; swap: "
                             "another episode's frames of the same task at the nearest step; default real)")
    parser.add_argument("--layers", type=int, default=None,
                        help="k of the first/last masks (default: the student's layers per input)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, type=out_file, help="also write the rows to this JSON file")


def run(args) -> int:
    from distill.diagnose import format_fit, offline_fit

    set_threads(args.threads)
    masks = [m.strip() for m in args.masks.split(",") if m.strip()]
    images = [m.strip() for m in args.images.split(",") if m.strip()]
    rows = offline_fit(args.policy, args.data, samples=args.samples, by=args.by, masks=masks, layers=args.layers,
                       images=images)
    print(format_fit(rows))
    write_json(args.json, rows)
    return 0
