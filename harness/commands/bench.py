"""Benchmarks that print ratios measured in one run.

    actdistill bench env --suite simpler_google [--task pick_coke_can_horizontal]
    actdistill bench env --suite libero_spatial --render fast
    actdistill bench scaling --suite simpler_google --workers 1,2
    actdistill bench flops --vision-encoder deep --vision-keypoints 32
"""

from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks: env step cost, Ray scaling, FLOPs share of the routed layers"

_TARGETS = {
    "env": "harness.bench_env",
    "scaling": "harness.bench_scaling",
    "flops": "harness.bench_flops",
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, mod in _TARGETS.items():
        if importlib.util.find_spec(mod) is None:
            continue
        module = importlib.import_module(mod)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_bench=module.run)


def run(args) -> int:
    return args._bench(args)
