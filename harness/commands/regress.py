"""Per-task regression check of a run against a stored baseline; exits 1 when a task got worse.

    actdistill regress --run runs/teacher --save-baseline results/baselines/teacher.json
    actdistill regress --run runs/teacher-new --baseline results/baselines/teacher.json
    actdistill regress --run runs/teacher-new --baseline results/baselines/teacher.json --alpha 0.01 \\
        --test binomial --correction none

Per task (pooled over variants): a one-sided Fisher exact test of "the run's success probability
is lower than the baseline's" (or, with --test binomial, an exact binomial test against the
baseline rate taken as exact), Holm-corrected over the tasks unless --correction none. Prints
both rates with 95% Wilson intervals and the p-values. Exit status: 0 no task significantly
worse, 1 at least one is, 2 bad arguments or files.
"""

from __future__ import annotations

from harness.commands import out_file

HELP = "per-task regression check against a baseline"


def add_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help="run folder holding episodes.parquet")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--baseline", help="baseline JSON to compare the run with")
    what.add_argument(
        "--save-baseline", metavar="FILE", type=out_file, help="write the run's baseline JSON to FILE and exit"
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    parser.add_argument(
        "--test",
        choices=("fisher", "binomial"),
        default="fisher",
        help="one-sided test per task (default fisher)",
    )
    parser.add_argument(
        "--correction",
        choices=("holm", "none"),
        default="holm",
        help="multiple-comparison correction over tasks (default holm)",
    )


def run(args) -> int:
    from harness.regress import check, format_check, save_baseline

    if args.save_baseline:
        baseline = save_baseline(args.run, args.save_baseline)
        n = sum(e["n"] for e in baseline["per_task"].values())
        print(
            f"[regress] baseline of {len(baseline['per_task'])} task(s), {n} episode(s) "
            f"-> {args.save_baseline}"
        )
        return 0
    rows = check(args.run, args.baseline, alpha=args.alpha, test=args.test, correction=args.correction)
    print(f"[regress] {args.run} vs {args.baseline}: one-sided {args.test} test per task")
    print(format_check(rows, alpha=args.alpha, correction=args.correction))
    return 1 if any(r["worse"] for r in rows) else 0
