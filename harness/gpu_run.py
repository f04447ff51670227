"""The reference models in one time-boxed run on a lent GPU machine: demonstrations, teacher, students, latency.

    actdistill gpu-run --out OUT                             # on the GPU machine
    actdistill gpu-run --out /tmp/g --device cpu --scale 0.02 --demo-s 30 --teacher-s 20 \\
        --stage1-steps 20 --student-s 10                     # the same pipeline, tiny, on a CPU (a dry run)
    actdistill gpu-run --out OUT --student-s 0 --demo-noise 0.1 \\
        --teacher-init results/checkpoints/teacher-simpler    # fine-tune the teacher on clean + noisy demos

A lent machine comes for minutes, with torch but without ffmpeg, mujoco or Ray, and sends back at most a
few files of 16 MiB. So this records the simpler family's demonstrations there, in parallel and as raw
frames (``--codec npy``), trains the teacher and distills the students under wall-clock budgets
(:class:`distill.loop.TimeBudget` fits each step count to its budget, so every schedule still ends on a
full cosine decay), measures latency on the device, and packs each checkpoint into one tar file under
``--out`` with a ``manifest.json`` holding every figure, command and timing. Each stage writes its
results before the next starts, so a run cut short still returns what it finished.

The demonstrations go to ``/dev/shm`` by default when it has room: raw frames are about 12 MB per
episode, and data loaders reading them from a disk that is still writing back the recording starve the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CHECKPOINT_FILES = ("config.json", "model.safetensors", "loss.png", "train_log.json", "history.json")


def _pack(folder: Path, file: Path) -> None:
    with tarfile.open(file, "w") as tar:
        for name in CHECKPOINT_FILES:
            if (folder / name).exists():
                tar.add(folder / name, arcname=f"{folder.name}/{name}")


FRAME_BYTES_PER_EPISODE = 12e6  # raw frames of one episode: up to ~110 steps of 128x256x3 uint8


def pick_data_dir(preferred: Path, fallback: Path, need_bytes: float) -> tuple[Path, str]:
    """``preferred`` when its file system has ``need_bytes`` free, else ``fallback``; and why."""
    import shutil

    probe = preferred
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free >= need_bytes:
        return preferred, f"{preferred}: {free / 1e9:.1f} GB free, {need_bytes / 1e9:.1f} GB needed"
    return fallback, (f"{preferred} has {free / 1e9:.1f} GB free but {need_bytes / 1e9:.1f} GB are needed; "
                      f"using {fallback}")


class Manifest:
    def __init__(self, file: Path):
        self.file, self.data, self.t0 = file, {"stages": {}}, time.monotonic()

    def stage(self, name: str, **info) -> None:
        self.data["stages"][name] = {"elapsed_s": round(time.monotonic() - self.t0, 1), **info}
        self.file.write_text(json.dumps(self.data, indent=2, default=str))
        print(f"[gpu_run] {name}: {json.dumps(info, default=str)[:600]}", flush=True)


HELP = "the reference pipeline, time-boxed, on a GPU machine"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The pipeline's options (``actdistill gpu-run``)."""
    p.add_argument("--out", required=True, help="folder for the tar files and manifest.json")
    p.add_argument("--work", default="runs/gpu", help="working folder for checkpoints (default runs/gpu)")
    p.add_argument("--data", default="/dev/shm/simpler-gpu" if Path("/dev/shm").is_dir() else "data/simpler-gpu",
                   help="demonstration folder (default /dev/shm/simpler-gpu: in memory, see the description)")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--scale", type=float, default=2.0, help="demo recipe scale (default 2.0)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="demo processes")
    p.add_argument("--demo-s", type=float, default=90.0, help="start no demo folder after this (default 90 s)")
    p.add_argument("--teacher-s", type=float, default=170.0, help="teacher training time (default 170 s)")
    p.add_argument("--teacher-batch", type=int, default=256)
    p.add_argument("--teacher-lr", type=float, default=8e-4)
    p.add_argument("--teacher-init", default=None,
                   help="fine-tune this checkpoint instead of training from scratch (train-teacher --init)")
    p.add_argument("--teacher-ema", type=float, default=0.0,
                   help="save the teacher's weight average with this decay, e.g. 0.999 (train-teacher --ema; "
                        "default 0: the trained weights)")
    p.add_argument("--teacher-keypoints", type=int, default=0,
                   help="spatial-softmax keypoints per camera in the teacher's vision (train-teacher "
                        "--vision-keypoints; default 0: off)")
    p.add_argument("--teacher-vision-encoder", default="patch", choices=["patch", "deep"],
                   help="the teacher's camera encoder (train-teacher --vision-encoder; default patch)")
    p.add_argument("--demo-noise", type=float, default=0.0,
                   help="also record the recipe with this executed-action noise (actdistill demos --noise) into "
                        "DATA-dart, inside the same --demo-s; the teacher trains on both (default 0: clean only)")
    p.add_argument("--demo-noise-hold", type=int, default=8, help="steps each noise draw is held (default 8)")
    p.add_argument("--stage1-steps", type=int, default=300)
    p.add_argument("--student-s", type=float, default=30.0,
                   help="stage-2 time per budget (default 30 s); 0 stops after the teacher (no students, no latency)")
    p.add_argument("--student-batch", type=int, default=64)
    p.add_argument("--budgets", default="0.25,0.5,0.75")
    p.add_argument("--workers", type=int, default=min(12, max(0, (os.cpu_count() or 2) - 2)),
                   help="data-loading worker processes")
    p.add_argument("--latency-iters", type=int, default=100)


def run(args: argparse.Namespace) -> int:
    """Run the pipeline's stages in order, writing ``OUT/manifest.json`` after each."""
    import torch

    from distill.router import parse_budgets

    budgets = parse_budgets(args.budgets)  # before anything runs
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    man = Manifest(out / "manifest.json")
    man.stage("start", argv=sys.argv, python=platform.python_version(), torch=torch.__version__,
              device=torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor(),
              cpus=os.cpu_count(), args=vars(args))
    _render_check(man)
    dataset = _record_demos(args, man)
    teacher = _train_teacher(args, dataset, work, out, man)
    if args.student_s <= 0:
        man.stage("done", skipped="students and latency (--student-s 0)")
        return 0
    _distill_students(args, dataset, teacher, budgets, work, out, man)
    _latency(args, teacher, budgets, work, man)
    man.stage("done")
    return 0


def _render_check(man: Manifest) -> None:
    """Fail fast when the simulator cannot render here."""
    import numpy as np

    import tasks as suites

    env = suites.make("simpler_google", suites.tasks("simpler_google")[0], seed=0)
    obs, _ = env.reset(seed=0)
    env.close()
    man.stage("render_check", agentview=list(np.asarray(obs["agentview"]).shape),
              mean_pixel=float(np.asarray(obs["agentview"]).mean()), mujoco_gl=os.environ.get("MUJOCO_GL"))


def _record_demos(args: argparse.Namespace, man: Manifest):
    """The simpler family's demonstrations (clean, and noisy with ``--demo-noise``) as one dataset."""
    import tasks as suites
    from harness.demo_sets import recipe, record_family
    from tasks.datasets import DemoDataset

    recipe_episodes = sum(e.episodes * len(suites.tasks(e.suite)) for e in recipe("simpler", args.scale))
    data, why = pick_data_dir(Path(args.data), Path("data/simpler-gpu"), FRAME_BYTES_PER_EPISODE * recipe_episodes)
    print(f"[gpu_run] demonstrations go to {why}", flush=True)
    t = time.monotonic()
    folders = record_family("simpler", data, scale=args.scale, jobs=args.jobs, codec="npy",
                            deadline_s=args.demo_s, progress=False, strict=False)
    dirs = [str(data)]
    if args.demo_noise > 0:
        noisy = data.with_name(data.name + "-dart")
        left = max(0.0, args.demo_s - (time.monotonic() - t))
        folders += record_family("simpler", noisy, scale=args.scale, jobs=args.jobs, codec="npy", deadline_s=left,
                                 progress=False, strict=False, noise=args.demo_noise, noise_hold=args.demo_noise_hold)
        if any(noisy.rglob("meta.json")):
            dirs.append(str(noisy))
    dataset = DemoDataset(dirs, chunk=8)
    per_variant: dict[str, int] = {}
    for f in dataset.folders:
        key = f"{f.meta['suite']}/{f.meta['variant']}" + ("/noisy" if f.meta.get("action_noise") else "")
        per_variant[key] = per_variant.get(key, 0) + int(f.meta["episodes"])
    man.stage("demos", data_dir=why, seconds=round(time.monotonic() - t, 1), folders=len(folders), samples=len(dataset),
              episodes=sum(per_variant.values()), per_variant=per_variant,
              recipe_episodes=recipe_episodes)
    return dataset


def _train_teacher(args: argparse.Namespace, dataset, work: Path, out: Path, man: Manifest) -> Path:
    """The teacher, trained for ``--teacher-s`` seconds, packed as ``OUT/teacher-simpler.tar``."""
    from distill.train import train_teacher

    teacher = work / "teacher-simpler"
    t = time.monotonic()
    summary = train_teacher(dataset, teacher, profile="small", device=args.device, steps=200_000,
                            batch_size=args.teacher_batch, lr=args.teacher_lr, ckpt_every=2000,
                            num_workers=args.workers, progress=False, time_budget_s=args.teacher_s,
                            init=args.teacher_init, ema=args.teacher_ema,
                            model_overrides=_teacher_overrides(args))
    _pack(teacher, out / "teacher-simpler.tar")
    man.stage("teacher", seconds=round(time.monotonic() - t, 1), **summary)
    return teacher


def _teacher_overrides(args: argparse.Namespace) -> dict | None:
    """The teacher's architecture options that differ from the profile's (None: the profile as it is)."""
    overrides = {}
    if args.teacher_vision_encoder != "patch":
        overrides["vision_encoder"] = args.teacher_vision_encoder
    if args.teacher_keypoints:
        overrides["vision_keypoints"] = args.teacher_keypoints
    return overrides or None


def _distill_students(args: argparse.Namespace, dataset, teacher: Path, budgets: list[float], work: Path, out: Path,
                      man: Manifest) -> None:
    """One student per budget, ``--student-s`` seconds each, packed as ``OUT/student-simpler-bB.BB.tar``."""
    from distill.student import ActDistillConfig, distill

    config = ActDistillConfig(steps=100_000, stage1_steps=args.stage1_steps, batch_size=args.student_batch,
                              num_workers=args.workers, time_budget_s=args.student_s, save_every=10_000)
    t = time.monotonic()
    result = distill(teacher, dataset, budgets, work / "distill", config=config, device=args.device,
                     progress=False)
    for b in budgets:
        folder = work / "distill" / f"student-b{b:g}"
        _pack(folder, out / f"student-simpler-b{b:.2f}.tar")
    man.stage("students", seconds=round(time.monotonic() - t, 1), **result)


def _latency(args: argparse.Namespace, teacher: Path, budgets: list[float], work: Path, man: Manifest) -> None:
    """Each student against the teacher on this device, alternating calls, each in its own process."""
    runs = sorted([(b, []) for b in budgets], key=lambda r: r[0] != 0.5)  # b0.5 first
    if args.device == "cuda" and 0.5 in budgets:
        runs.insert(1, (0.5, ["--no-cuda-graph"]))
    for b, extra in runs:
        name = f"latency_b{b:g}" + ("_eager" if extra else "")
        cmd = [sys.executable, "-m", "harness.cli", "latency", "--policy", str(work / "distill" / f"student-b{b:g}"),
               "--vs", str(teacher), "--iters", str(args.latency_iters), "--device", args.device, *extra]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            res = json.loads(line[-1]) if line else {"error": proc.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            res = {"error": "timed out after 120 s"}
        man.stage(name, command=" ".join(cmd), result=res)


def main(argv: list[str] | None = None) -> int:
    """``actdistill gpu-run`` with ``argv`` (for scripts and tests)."""
    from harness.cli import main as cli

    return cli(["gpu-run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
