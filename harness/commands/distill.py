"""Distill a teacher into routed students with ActDistill, one per compute budget (resumable).

    actdistill distill --teacher runs/teacher_small --data data/widowx data/google --budgets 0.25,0.5,0.75 \\
        --out runs/distill_small
    actdistill distill --teacher runs/teacher_full --data data/libero_spatial --budgets 0.5 --out runs/distill \\
        --device cuda --steps 20000 --stage1-steps 5000 --batch-size 64
    actdistill distill --teacher runs/teacher_small --data data/widowx --budgets 0.5 --out runs/router_only --no-graph
    actdistill train-teacher --init hf:/models/smolvlm2-500m --data data/simpler --out runs/smol_teacher --device cuda
    actdistill distill --teacher runs/smol_teacher --data data/simpler --budgets 0.5 --out runs/smol_distill \
        --device cuda   # a real VLM backbone: the router picks among its language model's decoder layers

OUT/encapsulation holds stage 1 (graph extractors, per-layer heads, the teacher cache keyed by sample id,
loss.png), shared by every budget. OUT/student-b<B> holds the student at budget B (fraction of decoder
layers run per input; each input runs floor(B * L) layers): model.safetensors + config.json (load with
distill.load_policy), loss.png and history.json. Rerunning skips finished budgets and resumes an
unfinished one from OUT/student-b<B>.work/training_state.pt (written every --save-every steps).
--no-graph trains the "router without graph supervision" ablation (stage 1 still runs: its cache supplies
the teacher's final chunks); give it its own --out.
"""

from __future__ import annotations

from harness.commands import out_folder
from tasks.errors import UserInputError

HELP = "distill a teacher into routed students (ActDistill)"


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", required=True,
                        help="teacher checkpoint folder (from train-teacher; for a transformers VLM, from "
                             "train-teacher --init hf:PATH, which trains its action head first)")
    parser.add_argument("--data", nargs="+", required=True, help="demonstration folders (from actdistill demos)")
    parser.add_argument("--budgets", default="0.25,0.5,0.75",
                        help="comma-separated fractions of decoder layers run per input (default 0.25,0.5,0.75)")
    parser.add_argument("--out", required=True, type=out_folder, help="output folder (created; resumed when it exists)")
    parser.add_argument("--steps", type=int, default=None, help="stage-2 steps per budget (default 3000)")
    parser.add_argument("--minutes-per-budget", type=float, default=None,
                        help="fit each budget's stage-2 step count to this many minutes (--steps is the upper bound)")
    parser.add_argument("--stage1-steps", type=int, default=None, help="stage-1 steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of both stages (default 32)")
    parser.add_argument("--save-every", type=int, default=None, help="steps between training states (default 250)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu or cuda (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and gate noise")
    parser.add_argument("--stage2-seed", type=int, default=None,
                        help="stage 2's own seed (default: --seed); stage 1 keeps --seed, so one stage-1 folder "
                        "serves several stage-2 seeds (to measure the spread of students)")
    parser.add_argument("--no-graph", action="store_true",
                        help="ablation: train the router without the graph-informed per-layer supervision")
    method = parser.add_argument_group("method weights and rates (defaults: the reference code's)")
    method.add_argument("--alpha", type=float, default=None, help="weight of the per-layer semantic term (default 1.0)")
    method.add_argument("--beta", type=float, default=None, help="weight of the per-layer action term (default 1.0)")
    method.add_argument("--eta", type=float, default=None,
                        help="weight of the relational-structure term inside the semantic term (default 0.5)")
    method.add_argument("--gamma", type=float, default=None, help="depth-weight exponent (default 2.0)")
    method.add_argument("--depth-norm", choices=["mean", "sum"], default=None,
                        help="depth weights normalised to mean 1 (the reference code; default) or to sum 1 "
                             "(this project's students before 2026-12: graph terms L times weaker)")
    method.add_argument("--lr", type=float, default=None,
                        help="student backbone learning rate (default 3e-4; the committed b0.50 student used 1e-3)")
    method.add_argument("--router-lr", type=float, default=None, help="router learning rate (default 1e-3)")
    method.add_argument("--graph-lr", type=float, default=None,
                        help="stage-2 learning rate of the student's extractors and heads (default 3e-4); 0 keeps "
                             "them frozen at stage 1's weights, so alignment falls only if the student's states move")
    method.add_argument("--shift-pad", type=int, default=None,
                        help="stage-2 random-shift image augmentation in pixels, 0 = off (default 0)")
    method.add_argument("--budget-weight", type=float, default=None,
                        help="weight lambda_b of the budget term (mean gate - b)^2 (default 1.0)")
    method.add_argument("--final-teacher-weight", type=float, default=None,
                        help="stage 2: weight of the final head against the teacher's chunk, beside weight 1 on "
                             "the ground truth (default: 1.0, the stage-1 heads' teacher weight); stage 1 is "
                             "unchanged, so its folder is reused")
    method.add_argument("--gate-center", action="store_true", default=None,
                        help="soft gates relative to each input's top-k threshold, so they cannot saturate "
                             "(off by default; see distill.router.centered_gates)")
    parser.add_argument("--stage1-from", default=None, metavar="DIR",
                        help="reuse the finished stage 1 in DIR (OTHER_OUT/encapsulation: same teacher and graph "
                             "settings) for larger data: its extractors, its cached teacher targets, and new ones "
                             "for the added samples only")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is much faster on a shared machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _open_dataset(dirs: list[str], chunk: int):
    """The training dataset of ``dirs`` (a seam for tests)."""
    from distill.data import open_dataset

    return open_dataset(dirs, chunk)


def run(args) -> int:
    import json

    from distill.checkpoint import read_config
    from distill.router import parse_budgets
    from distill.student import ActDistillConfig, distill

    if args.teacher.startswith("hf:"):
        raise UserInputError(f"--teacher {args.teacher}: a raw VLM folder has no trained action head to distill; "
                             f"first run actdistill train-teacher --init {args.teacher} --data ... --out "
                             "runs/hf_teacher, then distill --teacher runs/hf_teacher")
    budgets = parse_budgets(args.budgets)
    if args.threads is not None:
        if args.threads < 1:
            raise UserInputError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    # flags named like ActDistillConfig fields; unset ones keep the config's defaults
    names = ("steps", "stage1_steps", "batch_size", "save_every", "alpha", "beta", "eta", "gamma", "depth_norm", "lr",
             "router_lr", "graph_lr", "shift_pad", "budget_weight", "gate_center", "stage2_seed", "final_teacher_weight")
    overrides = {key: getattr(args, key) for key in names if getattr(args, key) is not None}
    if args.minutes_per_budget is not None:
        overrides["time_budget_s"] = 60.0 * args.minutes_per_budget
    config = ActDistillConfig(seed=args.seed, num_workers=args.workers, graph_supervision=not args.no_graph,
                              **overrides)
    chunk = int(read_config(args.teacher).get("vla", {}).get("chunk", 8))
    dataset = _open_dataset(list(args.data), chunk)
    summary = distill(args.teacher, dataset, budgets, args.out, config=config, device=args.device,
                      progress=not args.no_progress, stage1_from=args.stage1_from)
    print(json.dumps(summary))
    return 0
