"""Success of several policies pooled over evaluation draws, with intervals and the gap to the first.

    actdistill compare --policy teacher=runs/default/teacher,runs/seed12/teacher \\
        --policy b0.50=runs/default/student-b0.50,runs/seed12/student-b0.50
    actdistill compare --suite simpler_widowx --policy runs/default/teacher --policy runs/default/student-b0.50 \\
        --json runs/compare.json

Each --policy is NAME=DIR[,DIR...]: one run folder per draw of initial states (actdistill eval --seed S).
Each folder counts only its current rows (the latest weights), and the draws are concatenated. The table
gives success per draw, pooled on visual matching (VM) and the other variants (VA) where the suite has
both, and pooled overall, with Wilson 95% intervals. The first policy is the reference: every other row
shows its pooled difference to it in points, with a Newcombe 95% interval. An episode found in two
folders of one policy is an error, since counting a draw twice would narrow the intervals falsely.
"""

from __future__ import annotations

HELP = "pool success over evaluation draws per policy, with intervals and the gap to a reference"


def add_arguments(parser) -> None:
    parser.add_argument("--policy", action="append", required=True, metavar="NAME=DIR[,DIR...]",
                        help="a policy and its run folders, one per draw (repeat; the first is the reference)")
    parser.add_argument("--suite", default="simpler_google", help="suite to compare (default simpler_google)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")


def run(args) -> int:
    import json
    from pathlib import Path

    from harness.compare import compare, format_compare, parse_spec, to_json

    rows = compare([parse_spec(s) for s in args.policy], suite=args.suite)
    print(format_compare(rows, args.suite))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(to_json(rows), indent=1))
    return 0
