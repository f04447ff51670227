"""Check the simulator stack before a run: rendering backend (here and in a Ray worker), reference frames of
each suite family in every render mode, settled LIBERO init states, versions against the pins.

    actdistill doctor                                          # every check; exit 1 when one FAILs
    actdistill doctor --suites simpler_google,simpler_widowx --no-ray
    actdistill doctor --json runs/doctor/report.json           # the numbers and the fingerprint as JSON
    actdistill doctor --update-references                      # this machine's frames become the references

A frame FAILs when its mean absolute difference to the reference exceeds 1 gray level or more than 2% of its
pixels are off by more than 8 (harness/doctor.py says how these were chosen); FAILed frames and their
differences are written under --frames-out to look at. The sweep runs the same checks first (actdistill sweep
--skip-doctor to go without) and records the fingerprint with every episode.
"""

from __future__ import annotations

from harness.commands import out_file, out_folder, write_json

HELP = "check the simulator stack: render backend, reference frames, LIBERO settle, versions vs pins"


def add_arguments(parser) -> None:
    from harness.doctor import SUITES

    parser.add_argument(
        "--suites",
        default=None,
        help=f"comma-separated suites to check (default: all installed of {', '.join(SUITES)})",
    )
    parser.add_argument("--no-ray", action="store_true", help="skip the check inside a Ray worker")
    parser.add_argument(
        "--json",
        metavar="FILE",
        type=out_file,
        default=None,
        help="write every check, its numbers and the fingerprint to FILE",
    )
    parser.add_argument(
        "--frames-out",
        type=out_folder,
        default="runs/doctor",
        help="folder for the frames that FAIL and their differences (default runs/doctor)",
    )
    parser.add_argument(
        "--update-references",
        action="store_true",
        help="record this machine's frames and settled positions as the references under "
        "results/doctor/ (prints what changed); the check itself never rewrites them",
    )


def run(args) -> int:
    from pathlib import Path

    from harness.doctor import FAIL, run_doctor, update_references

    suites = [s.strip() for s in args.suites.split(",") if s.strip()] if args.suites else None
    if args.update_references:
        for line in update_references(suites):
            print(f"[doctor] reference {line}")
    report = run_doctor(suites, ray_workers=0 if args.no_ray else 1, frames_out=Path(args.frames_out))
    for line in report.lines():
        print(line)
    if report.status == FAIL:
        print(
            f"[doctor] {len(report.failed)} check(s) FAILed; differing frames are under {args.frames_out}. "
            "If the stack changed on purpose and the frames look right, record new references with "
            "actdistill doctor --update-references"
        )
    write_json(args.json, report.to_json())
    return 1 if report.status == FAIL else 0
