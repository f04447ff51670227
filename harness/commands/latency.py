"""Latency of a checkpoint's model call in its own pass (batch 1 by default); prints one JSON line.

    actdistill latency --policy runs/teacher_small
    actdistill latency --policy runs/teacher_small --iters 200 --threads 1
    actdistill latency --policy runs/student_50 --vs runs/teacher_small --device cuda --dtype bfloat16
    actdistill latency --policy runs/student_25 runs/student_50 runs/student_75 --vs runs/teacher_small
    actdistill latency --policy baseline:first_k@0.5:runs/teacher_small --vs runs/teacher_small --threads 1

Protocol (see distill/latency.py): synthetic observation of the checkpoint's shapes, warm-up, then
--iters timed calls; median and p90 in ms; CPU timers, or on CUDA events around a CUDA-graph replay.
With --vs both checkpoints are timed in one run with alternating calls; speedup = VS median / POLICY median.
With several --policy folders every one (and --vs) is timed in one interleaved round-robin pass, the way a
figure comparing them needs, and one JSON line is printed per policy (--vs last), sharing the pass's id.
"""

from __future__ import annotations

HELP = "time a model call, optionally against another"


def add_arguments(parser) -> None:
    from distill.latency import ROUTED_CAPTURES

    parser.add_argument("--policy", required=True, nargs="+",
                        help="checkpoint folder(s) or baseline specs (baseline:first_k@0.5:TEACHER); several are "
                             "timed together in one interleaved pass")
    parser.add_argument("--vs", default=None, help="second checkpoint folder, timed in the same run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch", type=int, default=1, help="observations per model call (default 1)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="parameter dtype (default float32)",
    )
    parser.add_argument("--iters", type=int, default=50, help="timed calls (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up calls (default 10)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds the timed calls are split into; their medians give the spread (default 5)")
    parser.add_argument(
        "--attn", default=None, choices=["sdpa", "eager"], help="attention kernel (default: the checkpoint's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-cuda-graph", action="store_true", help="on CUDA, time eager calls")
    parser.add_argument(
        "--routed-capture",
        default="auto",
        choices=list(ROUTED_CAPTURES),
        help="on CUDA, how a routed student is captured: one graph with a conditional node per layer, or a "
        "graph per route after a host read of the route (default auto: conditional where torch has it)",
    )


def run(args) -> int:
    import json
    import sys

    import torch

    from distill.baselines import SPEC_PREFIX, parse_policy_spec
    from distill.checkpoint import check_device, load_policy
    from distill.latency import busy_warning, measure_latency, measure_latency_group
    from tasks.errors import UserInputError

    check_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    policies = []
    for path in (*args.policy, args.vs):
        if path is None:
            continue
        if path.startswith(SPEC_PREFIX):  # a static baseline over a teacher, as eval and serve take it
            if args.dtype != "float32":
                raise UserInputError(f"--dtype {args.dtype} applies to checkpoint folders; the baseline {path!r} "
                                     "runs in float32 (drop --dtype, or time checkpoints only)")
            policy = parse_policy_spec(path).build(device=args.device)
        else:
            policy = load_policy(path, device=args.device, dtype=args.dtype)
        if args.attn is not None:
            policy.model.set_attn_implementation(args.attn)
        policies.append(policy)
    options = {"batch": args.batch, "iters": args.iters, "warmup": args.warmup,
               "use_cuda_graph": not args.no_cuda_graph, "routed_capture": args.routed_capture, "rounds": args.rounds}
    if len(args.policy) > 1:
        names = [*args.policy, *([args.vs] if args.vs else [])]
        results = measure_latency_group(policies, names=names, reference=len(policies) - 1 if args.vs else None,
                                        **options)
        for result in results:
            print(json.dumps(result))
        result = results[0]
    else:
        result = measure_latency(policies[0], vs=policies[1] if len(policies) > 1 else None, **options)
        print(json.dumps(result))
    warning = busy_warning(result)
    if warning:
        print(f"actdistill latency: warning: {warning} (rerun on a quiet machine)", file=sys.stderr)
    return 0
