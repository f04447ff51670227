"""Store a checkpoint (teacher or student) in another precision, e.g. float16 to halve the file.

    actdistill convert --policy runs/distill/s1/student-b0.5 --out results/checkpoints/student-simpler-b0.50
    actdistill convert --policy runs/train/teacher-libero --out results/checkpoints/teacher-libero --dtype bfloat16

Floating tensors are cast to --dtype; the checkpoint still loads as float32 with distill.load_policy.
config.json is kept (its "storage" field says what was done), and loss.png and the training logs come
along. An existing checkpoint in --out is replaced only with --overwrite.
"""

from __future__ import annotations

from harness.commands import out_folder

HELP = "store a checkpoint in float16 or bfloat16"


def add_arguments(parser) -> None:
    parser.add_argument("--policy", required=True, help="checkpoint folder to convert")
    parser.add_argument("--out", required=True, type=out_folder, help="folder to write (created)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                        help="storage dtype of floating tensors (default float16)")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")


def run(args) -> int:
    from distill.checkpoint import convert_checkpoint

    result = convert_checkpoint(args.policy, args.out, args.dtype, overwrite=args.overwrite)
    print(f"[convert] {args.policy} -> {args.out}: {result['dtype']}, "
          f"{result['src_bytes'] / 1e6:.1f} MB -> {result['dst_bytes'] / 1e6:.1f} MB")
    return 0
