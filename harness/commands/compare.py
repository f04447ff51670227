"""Success of several policies pooled over evaluation draws, with intervals and the gap to the first.

    actdistill compare --policy teacher=runs/default/teacher,runs/seed12/teacher \\
        --policy b0.50=runs/default/student-b0.50,runs/seed12/student-b0.50
    actdistill compare --by task --policy cpu=runs/default/teacher,runs/seed12/teacher \\
        --policy gpu=runs/gpu-teacher-s0,runs/gpu-teacher-s12
    actdistill compare --suite simpler_widowx --policy runs/default/teacher --policy runs/default/student-b0.50 \\
        --json runs/compare.json
    actdistill compare --suite libero_spatial,libero_object,libero_goal --policy teacher=runs/libero/teacher \\
        --policy b0.50=runs/libero/student-b0.50      # several suites pooled into one row per policy

Each --policy is NAME=DIR[,DIR...]: one run folder per draw of initial states (actdistill eval --seed S).
Each folder counts only its current rows (the latest weights), and the draws are concatenated. The table
gives success per draw, pooled on visual matching (VM) and the other variants (VA) where the suite has
both, and pooled overall, with Wilson 95% intervals. The first policy is the reference: every other row
shows its pooled difference to it in points, with a Newcombe 95% interval. An episode found in two
folders of one policy is an error, since counting a draw twice would narrow the intervals falsely.
With --by task the table has a row per task (all variants pooled) and a column per policy.
"""

from __future__ import annotations

from harness.commands import out_file

HELP = "success of policies over draws, with gaps by state"


def add_arguments(parser) -> None:
    parser.add_argument("--policy", action="append", required=True, metavar="NAME=DIR[,DIR...]",
                        help="a policy and its run folders, one per draw (repeat; the first is the reference)")
    parser.add_argument("--suite", default="simpler_google",
                        help="suite to compare (default simpler_google); several separated by commas are pooled, "
                             "e.g. libero_spatial,libero_object,libero_goal")
    parser.add_argument("--by", default="split", choices=["split", "task"],
                        help="split: VM, VA and all per policy (default); task: a row per task, a column per policy")
    parser.add_argument("--json", default=None, type=out_file, help="also write the rows to this JSON file")


def run(args) -> int:
    import json
    from pathlib import Path

    from harness.compare import compare, compare_tasks, format_compare, format_tasks, parse_spec, to_json

    policies = [parse_spec(s) for s in args.policy]
    if args.by == "task":
        table = compare_tasks(policies, suite=args.suite)
        print(format_tasks(table, [name for name, _ in policies], args.suite))
        data = {task: {name: r.to_json() for name, r in rates.items()} for task, rates in table.items()}
    else:
        rows = compare(policies, suite=args.suite)
        print(format_compare(rows, args.suite))
        data = to_json(rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1))
    return 0
