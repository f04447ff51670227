"""Relabel a policy's own rollouts with the scripted expert (DAgger) into a demonstration dataset.

    actdistill dagger --policy results/checkpoints/teacher-simpler --suite simpler_google --episodes 10 --out data/dagger-r1/google
    actdistill dagger --policy runs/train/teacher --family simpler --out data/dagger-r1 --jobs 2
    actdistill train-teacher --data data/simpler data/dagger-r1 --out runs/train/teacher-r1   # the next round
    actdistill dagger --policy results/checkpoints/student-libero-b0.50 --labeller results/checkpoints/teacher-libero \
        --suite libero_goal --variant sampled_init --episodes 3 --seed 201 --out data/onpolicy/libero_goal
    actdistill distill --teacher results/checkpoints/teacher-libero --data data/libero data/onpolicy ...   # on-policy distillation

The policy drives (with --beta, each step's action is the expert's with that probability); the expert
labels every visited state; failed episodes are kept. Initial states come from --seed (default 101, away
from the evaluation draws). With the scripted expert, SIMPLER-style suites only: their experts replan from any
state they are shown; LIBERO's plans once from the initial state. With --labeller TEACHER a policy labels
instead (replanning every step): any suite; the student-drives/teacher-labels data of on-policy distillation.
--first-episode moves the episode indices (a suite's official init states) away from those you evaluate on. An existing dataset is never overwritten without
--overwrite; with --family, finished folders are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

from harness.commands import out_folder, set_threads
from tasks.errors import UserInputError

HELP = "relabel a policy's rollouts with the scripted expert or a teacher policy (DAgger data)"


def add_arguments(parser) -> None:
    from harness.dagger import DEFAULT_SEED

    parser.add_argument("--policy", required=True, help="checkpoint folder or baseline spec (as for eval)")
    parser.add_argument("--suite", default=None, help="simpler_google or simpler_widowx")
    parser.add_argument("--family", default=None, help="'simpler': every suite and variant of the demo recipe")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="with --family: episodes = scale x a quarter of the demo recipe's (default 1)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names or indices (default: all)")
    parser.add_argument("--variant", default=None, help="variant name (default: the suite's first)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the initial states (default {DEFAULT_SEED})")
    parser.add_argument("--beta", type=float, default=0.0,
                        help="per-step probability of executing the expert's action instead (default 0)")
    parser.add_argument("--labeller", default=None,
                        help="a policy (teacher checkpoint) that labels instead of the scripted expert; any suite")
    parser.add_argument("--first-episode", type=int, default=0,
                        help="episode index of the first initial state (default 0)")
    parser.add_argument("--codec", default="h264", choices=["h264", "npy"], help="image storage (default h264)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", required=True, type=out_folder, help="dataset folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")


def run(args) -> int:
    from harness.dagger import record_dagger, record_dagger_family

    if (args.suite is None) == (args.family is None):
        raise UserInputError("give exactly one of --suite SUITE or --family FAMILY")
    set_threads(args.threads)
    if args.family is not None:
        folders = record_dagger_family(args.policy, args.family, args.out, scale=args.scale, seed=args.seed,
                                       beta=args.beta, codec=args.codec, labeller=args.labeller)
        print(f"[dagger] {args.family}: {len(folders)} dataset folders under {args.out}")
        return 0
    task_list = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    meta = record_dagger(args.policy, args.suite, args.out, tasks=task_list, variant=args.variant,
                         episodes=args.episodes, seed=args.seed, beta=args.beta, overwrite=args.overwrite,
                         codec=args.codec, labeller=args.labeller, first_episode=args.first_episode)
    ok = sum(t["successes"] for t in meta["dagger"]["tasks"].values())
    n = args.episodes * len(meta["dagger"]["tasks"])
    print(f"[dagger] wrote {meta['episodes']} episodes ({meta['steps']} steps) to {args.out}; "
          f"the rollouts succeeded in {ok}/{n}")
    return 0
