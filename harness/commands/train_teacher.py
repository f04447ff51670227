"""Train the reference teacher VLA on recorded demonstrations (resumes when OUT holds a training state).

    actdistill train-teacher --data data/widowx data/google --out runs/teacher_small
    actdistill train-teacher --data data/libero_spatial --out runs/teacher_full --profile full \
        --device cuda --workers 8
    actdistill train-teacher --data data/widowx --out runs/teacher_small --steps 30000   # extend a run
    actdistill train-teacher --data data/simpler --out runs/teacher_deep --vision-encoder deep \
        --vision-keypoints 32   # the overlapping-conv encoder with keypoints on its 16x16 map
    actdistill train-teacher --data data/simpler data/simpler-dart --out runs/ft --init results/checkpoints/teacher-simpler \
        --steps 3000 --lr 2e-4   # fine-tune a checkpoint
    actdistill train-teacher --data data/simpler --out runs/pg_teacher --init hf:/models/paligemma-3b-pt-224 \
        --device cuda --lr 5e-5   # a transformers VLM folder (PaliGemma, SmolVLM, Idefics3): a fresh action head
        # on its vision tower and decoder layers, all fine-tuned; distill OUT afterwards (distill.hf_vla)
    actdistill train-teacher --data data/simpler --out runs/teacher_aux --aux-targets expert_target,objects \
        --aux-weight 0.1   # an aux head on privileged simulator fields, trained only (not in the checkpoint)
    actdistill train-teacher --data data/simpler --out runs/teacher_pdrop --proprio-dropout 0.5   # hide the hand
        # position from half the samples; --drop-hand-position hides it always, inference included

OUT receives model.safetensors + config.json (load with distill.load_policy), training_state.pt,
train_log.json and loss.png every --ckpt-every steps and at the end.
"""

from __future__ import annotations

from harness.commands import out_folder

HELP = "train the reference teacher VLA on demonstrations"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--data", nargs="+", required=True, help="demonstration folders (from actdistill demos)"
    )
    parser.add_argument("--out", required=True, type=out_folder, help="checkpoint folder (created; resumed if it has a state)")
    parser.add_argument(
        "--profile",
        default="small",
        choices=["small", "full"],
        help="model and optimisation sizes: small (CPU) or full (GPU); default small",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--steps", type=int, default=None, help="total optimisation steps (default: profile's)"
    )
    parser.add_argument("--minutes", type=float, default=None,
                        help="fit the step count to this many minutes of training (a time-boxed GPU run; "
                             "--steps or the profile's count is then the upper bound)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches, augmentation")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: profile's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: profile's)")
    parser.add_argument("--loss", choices=["l1", "mse"], default=None,
                        help="loss on the normalised action chunk (default: the profile's)")
    parser.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default: profile's)")
    parser.add_argument("--init", default=None,
                        help="fine-tune: start from this checkpoint's weights, architecture, vocabulary and "
                             "normalisation (fresh optimiser and schedule); OUT must be new or hold this run's state. "
                             "hf:PATH: a transformers VLM folder (PaliGemma, SmolVLM, Idefics3; local files only) "
                             "with a fresh action head and the data's normalisation")
    parser.add_argument("--keep-every", type=int, default=None,
                        help="also keep the checkpoint of every N-th step (a multiple of --ckpt-every) as "
                             "OUT/snapshots/step-N, to choose among them by closed-loop success on a held-out draw")
    parser.add_argument("--ema", type=float, default=None, metavar="DECAY",
                        help="save an exponential moving average of the weights (decay in (0, 1), e.g. 0.999) "
                             "as the checkpoint, and the trained weights in OUT/raw; 0: off (default)")
    parser.add_argument("--vision-encoder", default=None, choices=["patch", "deep", "state"],
                        help="camera encoder: patch (patchify stem, distill.vla.PatchEncoder) or deep (3x3 convs "
                             "with GroupNorm to a 16x16 map, distill.vla.DeepEncoder); state: the state-input "
                             "ceiling, privileged scene entities instead of cameras (needs demonstrations with "
                             "'objects'; a diagnostic); default patch")
    parser.add_argument("--vision-keypoints", type=int, default=None, metavar="K",
                        help="K spatial-softmax keypoints per camera, read off the encoder's stride-8 map (the "
                             "deep map with --vision-encoder deep) into one more vision token; default 0: off")
    parser.add_argument("--aux-targets", type=_names, default=None, metavar="NAMES",
                        help="comma-separated privileged fields for an auxiliary head on the vision tokens to "
                             "predict during training: expert_target (the expert's waypoint minus the hand, "
                             "gripper command, phase), objects (scene entities minus the hand); the data must "
                             "have them, the saved checkpoint never holds the head; default none")
    parser.add_argument("--aux-weight", type=float, default=None, metavar="W",
                        help="weight of the aux loss next to the chunk loss (default 0.1 with --aux-targets)")
    parser.add_argument("--proprio-dropout", type=float, default=None, metavar="P",
                        help="training only: per sample, with probability P, hide the absolute hand position "
                             "(proprio dims 0-2, set to their normalised mean 0); default 0: off")
    parser.add_argument("--drop-hand-position", action="store_true",
                        help="the model never sees the absolute hand position (proprio dims 0-2), in training "
                             "and at inference (stored in the model config)")
    parser.add_argument("--ckpt-every", type=int, default=None, help="steps between checkpoints")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; on a busy machine 1 can be faster)",
    )
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import json

    import torch

    from distill.train import train_teacher

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    summary = train_teacher(
        args.data,
        args.out,
        profile=args.profile,
        device=args.device,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        init=args.init,
        keep_every=args.keep_every,
        ema=args.ema,
        ckpt_every=args.ckpt_every,
        loss=args.loss,
        num_workers=args.workers,
        progress=not args.no_progress,
        time_budget_s=None if args.minutes is None else 60.0 * args.minutes,
        model_overrides=_model_overrides(args),
        aux_targets=args.aux_targets,
        aux_weight=args.aux_weight,
        proprio_dropout=args.proprio_dropout,
    )
    print(json.dumps(summary))
    return 0


def _model_overrides(args) -> dict | None:
    """The architecture options given on the command line (None when none: a resume keeps the model)."""
    given = {"vision_encoder": args.vision_encoder, "vision_keypoints": args.vision_keypoints,
             "drop_hand_position": True if args.drop_hand_position else None}
    return {key: value for key, value in given.items() if value is not None} or None


def _names(text: str) -> list[str]:
    """``"expert_target,objects"`` -> ``["expert_target", "objects"]`` (names are checked by train_teacher)."""
    return [name.strip() for name in text.split(",") if name.strip()]
