"""Record successful scripted-expert episodes as a demonstration dataset (see tasks/datasets.py).

    actdistill demos --suite simpler_widowx --episodes 50 --out data/widowx
    actdistill demos --suite simpler_google --tasks move_near,0 --episodes 20 --out data/google --overwrite
    actdistill demos --family simpler --out data/simpler    # the reference teacher's set (harness/demo_sets.py)
    actdistill demos --family simpler --scale 2 --boost move_near=3 --jobs 2 --out data/simpler-s2   # issue 21's scale
    actdistill demos --suite simpler_widowx --format lerobot --out data/widowx-lerobot   # LeRobot v3.0 layout

Per task it runs the expert on episode indices 0, 1, 2, ... (initial states from --seed; the
default seed 1 keeps demonstrations off the evaluation states of seed 0) and keeps successful
episodes until --episodes are stored or --max-attempts were tried, then reports the expert's
success rate. An existing dataset is never overwritten without --overwrite. --format lerobot writes the
LeRobot dataset layout v3.0 (tasks/lerobot.py) for one --suite; --family writes our format only.
"""

from __future__ import annotations

from harness.commands import out_folder
from tasks.errors import UserInputError

HELP = "record scripted-expert demonstrations"


def add_arguments(parser) -> None:
    parser.add_argument("--suite", default=None, help="suite name, e.g. simpler_widowx")
    parser.add_argument("--family", default=None,
                        help="record a family's reference set instead of one suite (see harness/demo_sets.py)")
    parser.add_argument("--scale", type=float, default=1.0, help="with --family: scale the episode counts")
    parser.add_argument("--boost", default=None, metavar="TASK=FACTOR[,...]",
                        help="with --family: multiply some tasks' episode counts, e.g. move_near=3 (folders per task)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names or indices (default: all)")
    parser.add_argument("--variant", default=None, help="variant name (default: the suite's first)")
    parser.add_argument("--episodes", type=int, default=50, help="successful episodes per task (default 50)")
    parser.add_argument("--max-attempts", type=int, default=None,
                        help="episodes tried per task before giving up (default 2 x episodes + 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the initial states (default 1)")
    parser.add_argument("--crf", type=int, default=0, help="H.264 constant rate factor; 0 = lossless (default)")
    parser.add_argument("--codec", default="h264", choices=["h264", "npy"],
                        help="image storage: h264 (lossless at --crf 0, needs ffmpeg) or npy (raw uint8; default h264)")
    parser.add_argument("--format", default="actdistill", choices=["actdistill", "lerobot"],
                        help="dataset layout: actdistill (tasks/datasets.py; default) or lerobot (LeRobot "
                             "v3.0: meta/info.json, parquet, one mp4 per camera; tasks/lerobot.py)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="with --family: record that many folders at once, one per task (default 1)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="std of Gaussian noise added to the executed arm action (not the recorded label), "
                             "in action units; DART-style demonstrations of recoveries (default 0: none)")
    parser.add_argument("--noise-hold", type=int, default=1,
                        help="steps each noise draw is held (a drift like an open-loop action chunk's; default 1)")
    parser.add_argument("--out", required=True, type=out_folder, help="dataset folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")


def run(args) -> int:
    if (args.suite is None) == (args.family is None):
        raise UserInputError("give exactly one of --suite SUITE or --family FAMILY")
    if args.boost and args.family is None:
        raise UserInputError("--boost applies to --family recordings; with --suite give --episodes instead")
    if args.family is not None:
        if args.format != "actdistill":
            raise UserInputError(f"--family records one folder per task in the actdistill format; --format "
                                 f"{args.format} records one --suite at a time (run it per suite)")
        from harness.demo_sets import parse_boost, record_family

        folders = record_family(args.family, args.out, scale=args.scale, jobs=args.jobs, codec=args.codec,
                                noise=args.noise, noise_hold=args.noise_hold, boost=parse_boost(args.boost))
        print(f"[demos] {args.family}: {len(folders)} dataset folders under {args.out}")
        return 0
    from harness.demos import record_demos

    task_list = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    meta = record_demos(args.suite, args.out, tasks=task_list, variant=args.variant, episodes=args.episodes,
                        max_attempts=args.max_attempts, seed=args.seed, crf=args.crf,
                        overwrite=args.overwrite, codec=args.codec, noise=args.noise,
                        noise_hold=args.noise_hold, data_format=args.format)
    short = [t for t, s in meta["expert_success"].items() if s["successes"] < args.episodes]
    print(f"[demos] wrote {meta['episodes']} episodes ({meta['steps']} steps, {meta['bytes'] / 1e6:.1f} MB of images, "
          f"max pixel error {meta['image_codec']['max_abs_error']}) to {args.out}")
    if short:
        print(f"[demos] warning: fewer than {args.episodes} demos for {', '.join(short)} (attempt cap reached)")
    return 0
