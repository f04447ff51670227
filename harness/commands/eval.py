"""Evaluate a policy on a suite; episodes are stored as they finish and a rerun resumes.

    actdistill eval --policy expert --suite simpler_widowx --episodes 10 --out runs/expert
    actdistill eval --policy ckpt/teacher --suite simpler_google --tasks 0,move_near --variant all
    actdistill eval --policy expert --suite libero_spatial --episodes 50 --videos 2 --out runs/libero
    actdistill eval --policy ckpt/teacher --suite simpler_google --workers 2      # Ray, 2 workers
    actdistill eval --policy baseline:first_k@0.5:ckpt/teacher --suite simpler_widowx
    actdistill eval --policy ckpt/student --suite simpler_google --execute 4   # a model call every 4 steps
    actdistill eval --policy ckpt/student --suite simpler_google --plan default --workers 2 --videos 0
                                     # the episodes the sweep's default profile gives a policy
    actdistill eval --policy ws://127.0.0.1:8000 --suite simpler_widowx --workers 2
                                     # a policy served by `actdistill serve` (or any openpi server)
    actdistill eval --policy ws://gpu-box:8000 --obs-map openpi-libero --suite libero_spatial --episodes 50
    actdistill eval --policy py:my_lab.policies:make_policy --suite simpler_widowx   # factory(env) or factory()

Writes OUT/episodes.parquet (one row per episode) and OUT/summary.json (per task, per suite and
variant, overall; 95% Wilson intervals), then prints the table.
"""

from __future__ import annotations

from harness.commands import out_folder
from tasks.errors import UserInputError

HELP = "evaluate a policy on a suite (resumable, Ray-parallel)"


def add_arguments(parser) -> None:
    parser.add_argument("--policy", required=True,
                        help="'expert', a checkpoint folder, baseline:<name>@<budget>:<teacher folder>, a policy "
                             "server ws://HOST:PORT (openpi's websocket protocol), or py:package.module:factory")
    parser.add_argument("--obs-map", default=None,
                        help="with --policy ws://...: how observations become the server's request and its "
                             "actions ours; a preset (actdistill: our keys, the default; openpi-libero: openpi's "
                             "LIBERO example) or a JSON file (see harness/serving/obs_map.py)")
    parser.add_argument("--execute", type=int, default=None, metavar="K",
                        help="actions of each predicted chunk executed open loop before the next model call "
                             "(1..chunk; default: the whole chunk); compute per step is the call's / K")
    parser.add_argument("--suite", required=True, help="suite name, e.g. simpler_widowx")
    parser.add_argument("--tasks", default=None, help="comma-separated task names or indices (default: all)")
    parser.add_argument("--variant", default=None, help="variant name or 'all' (default: the suite's first)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task and variant (default 10)")
    parser.add_argument("--plan", default=None,
                        help="run the episodes a sweep profile (smoke, default, full) gives every policy on this "
                             "suite, as in the sweep's policy_eval stage; replaces --tasks, --variant, --episodes")
    parser.add_argument("--states", default=None, choices=("shared", "distinct"),
                        help="'shared': every variant runs episodes 0..N-1, the same initial states (a paired "
                             "variant comparison); 'distinct': each variant gets its own block of episode "
                             "indices, so no initial state runs twice (default: distinct with --plan, else shared)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial states (default 0)")
    parser.add_argument("--out", default=None, type=out_folder, help="run folder (default runs/eval/<policy>)")
    parser.add_argument("--videos", type=int, default=2,
                        help="save agentview videos of the first N episodes per task and variant")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on steps per episode (default: suite's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--workers", type=int, default=0,
                        help="Ray workers (0 = sequential in this process; default 0)")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster at this address")


def run(args) -> int:
    from pathlib import Path

    from harness.evaluate import evaluate, policy_source

    out = args.out or str(Path("runs") / "eval" / Path(args.policy.replace(":", "_").replace("@", "_")).name)
    task_list = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    counts = None
    if args.plan is not None:
        from harness.sweep import PROFILES, plan

        if args.plan not in PROFILES:
            raise UserInputError(f"unknown plan {args.plan!r}; valid plans: {', '.join(sorted(PROFILES))}")
        if task_list or args.variant:
            raise UserInputError("--plan chooses the tasks and variants; drop --tasks and --variant")
        task_list, counts = plan(PROFILES[args.plan], args.suite, policies=True)
    if args.workers < 0:
        raise UserInputError(f"--workers must be >= 0, got {args.workers}")
    backend = "sequential"
    if args.workers or args.address:
        from harness.ray_backend import register

        backend = register(args.workers or None, address=args.address)
    policy = args.policy
    if args.obs_map is not None or args.execute is not None:
        policy = policy_source(args.policy, obs_map=args.obs_map, execute=args.execute)
    evaluate(policy, args.suite, tasks=task_list, variant=args.variant, episodes=args.episodes,
             seed=args.seed, out=out, videos=args.videos, max_steps=args.max_steps,
             progress=not args.no_progress, backend=backend, episodes_by_variant=counts,
             distinct_states=(args.states or ("distinct" if args.plan is not None else "shared")) == "distinct")
    return 0
