"""Where a teacher's model call spends its FLOPs: routed decoder layers vs the fixed rest; prints JSON lines.

    actdistill bench flops                                   # the committed teacher-simpler
    actdistill bench flops --vision-encoder deep --vision-keypoints 32
    actdistill bench flops --policy runs/teacher_small --vision-encoder deep --vision-coords

One line for the checkpoint's architecture and, when an architecture option is given, one for the same
config with it (fresh weights: FLOPs do not depend on them). Each gives, per instruction of the checkpoint's
training data at batch 1 (:func:`distill.flops.routed_share`), the share of the call in the decoder layers a
router can skip (``routed_share``: min, median, max over instructions; the shortest instruction has the
fewest decoder tokens, so the smallest share) and the FLOPs split at the median instruction. A router at a
budget of a fraction b of the layers costs ``fixed_share + b * routed_share`` of the teacher's call.
"""

from __future__ import annotations

import json

import numpy as np

from tasks.errors import UserInputError

HELP = "FLOPs share of the routed decoder layers vs vision, embedding and head"
DEFAULT_POLICY = "results/checkpoints/teacher-simpler"


def add_arguments(parser) -> None:
    from distill.vla import VISION_ENCODERS

    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help=f"teacher checkpoint folder (default {DEFAULT_POLICY})")
    parser.add_argument("--vision-encoder", default=None, choices=list(VISION_ENCODERS),
                        help="also count the checkpoint's config with this camera encoder")
    parser.add_argument("--vision-keypoints", type=int, default=None, metavar="K",
                        help="... with K keypoints per camera (0: none)")
    parser.add_argument("--vision-coords", action="store_true", help="... with CoordConv channels")


def flops_shares(vla_config: dict, instructions: list[str]) -> dict:
    """The routed share of a model built from ``vla_config`` (a checkpoint's ``"vla"`` section) over
    ``instructions`` at batch 1: ``{"encoder", "stem_channels", "vision_keypoints", "vision_coords",
    "text_tokens": [min, median, max], "routed_share": {"min", "median", "max"}, "median_call"}``, the last
    the :func:`distill.flops.routed_share` dict of the instruction with the median share."""
    import torch

    from distill.flops import routed_share
    from distill.vla import VLA, VLAConfig

    cfg = VLAConfig.from_dict(vla_config)
    with torch.device("meta"):  # shapes only: no weights are allocated or initialised
        model = VLA(cfg)
    size = (cfg.image_size, cfg.image_size, 3)
    rows = []
    for text in instructions:
        obs = {**{cam: np.zeros(size, np.uint8) for cam in cfg.cameras},
               "proprio": np.zeros(cfg.proprio_dim, np.float32), "instruction": text}
        batch = model.prepare([obs], device="cpu")
        rows.append((int(batch["input_ids"].shape[1]), routed_share(model, batch)))
    rows.sort(key=lambda row: row[1]["routed_share"])
    shares = [r["routed_share"] for _, r in rows]
    tokens = sorted(n for n, _ in rows)
    return {"encoder": cfg.vision_encoder, "stem_channels": cfg.stem_channels,
            "vision_keypoints": cfg.vision_keypoints, "vision_coords": cfg.vision_coords,
            "text_tokens": [tokens[0], tokens[len(tokens) // 2], tokens[-1]],
            "routed_share": {"min": round(shares[0], 4), "median": round(float(np.median(shares)), 4),
                             "max": round(shares[-1], 4)},
            "median_call": rows[len(rows) // 2][1]}


def run(args) -> int:
    from distill.checkpoint import read_config

    config = read_config(args.policy)
    instructions = (config.get("data") or {}).get("instructions") or []
    if not instructions:
        raise UserInputError(f"{args.policy}'s config.json lists no training instructions "
                             "(data.instructions); pass a teacher checkpoint (actdistill train-teacher writes them)")
    line = {"policy": args.policy, "model": "checkpoint", **flops_shares(config["vla"], instructions)}
    print(json.dumps(line))
    options = {"vision_encoder": args.vision_encoder, "vision_keypoints": args.vision_keypoints,
               "vision_coords": True if args.vision_coords else None}
    options = {k: v for k, v in options.items() if v is not None}
    if options:
        print(json.dumps({"policy": args.policy, "model": f"checkpoint with {options}",
                          **flops_shares({**config["vla"], **options}, instructions)}))
    return 0
