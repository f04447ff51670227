"""Figures and tables from stored run folders (reads result files only: no Ray, simulator or torch).

    actdistill report --runs runs/teacher runs/student_50 runs/first_k_50 runs/expert --out runs/report
    actdistill report --runs runs/*/ --out runs/report --base-variant visual_matching

Each run folder holds episodes.parquet and optionally meta.json (policy, kind, budget, method,
flops_per_call, latency_ms, ...) and latency.json; see harness/report.py for the format. Writes
success vs FLOPs / latency (PNG and PDF, Pareto front, Wilson error bars), per-task and per-suite
tables (markdown and CSV), SIMPLER-style variant aggregation, routing heatmaps and report.md.
"""

from __future__ import annotations

from harness.commands import out_folder

HELP = "figures and tables from stored run folders"


def add_arguments(parser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, help="run folders (one policy each)")
    parser.add_argument("--out", default="runs/report", type=out_folder, help="output folder (default runs/report)")
    parser.add_argument(
        "--base-variant",
        default="visual_matching",
        help="variant compared with the mean of the others (default visual_matching)",
    )


def run(args) -> int:
    from harness.report import build_report

    written = build_report(args.runs, args.out, base_variant=args.base_variant)
    print(f"[report] {len(written)} file(s) -> {args.out}")
    for path in written:
        print(f"  {path}")
    return 0
