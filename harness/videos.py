"""Episode videos (mp4 via imageio-ffmpeg) with the outcome and per-frame policy latency overlaid.

    from harness.videos import write_episode_video
    result = rollout(policy, env, episode_index=0, seed=0, videos=True)
    write_episode_video(result, "runs/x/videos/simpler_google/move_near/visual_matching/ep0000.mp4",
                        title="student_50 | move_near | ep 0")

Each frame is the agentview image scaled up (nearest neighbour) between two text bands drawn with
Pillow: on top the title and ``step t/T``, below the latency of the ``act`` call that frame fed
(``policy 3.1 ms``; the last frame, which fed no call, shows ``end``) and the episode's outcome
(``SUCCESS`` in green, ``FAILURE`` in red, with the failure reason when there is one).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tasks.errors import UserInputError

GREEN = (60, 200, 90)
RED = (230, 70, 60)
WHITE = (235, 235, 235)
BAND = 18  # pixels per text line


def annotate_frames(
    frames: list[np.ndarray | None],
    policy_ms: list[float],
    success: bool,
    *,
    title: str = "",
    failure_reason: str | None = None,
    scale: int = 2,
) -> list[np.ndarray]:
    """Frames ``(H, W, 3)`` uint8 -> annotated frames ``(scale*H + 3*BAND, scale*W, 3)`` uint8.

    ``frames[t]`` (t < len(policy_ms)) is the observation that the ``t``-th ``act`` call, lasting
    ``policy_ms[t]``, received; ``None`` entries (unrendered steps) are skipped.
    """
    if scale < 1:
        raise UserInputError(f"scale must be >= 1, got {scale}")
    font = ImageFont.load_default(size=12)
    outcome = "SUCCESS" if success else "FAILURE" + (f": {failure_reason}" if failure_reason else "")
    colour = GREEN if success else RED
    steps = len(frames) - 1
    out = []
    for t, frame in enumerate(frames):
        if frame is None:
            continue
        img = np.asarray(frame, dtype=np.uint8).repeat(scale, axis=0).repeat(scale, axis=1)  # (sH, sW, 3)
        height, width = img.shape[:2]
        canvas = Image.new("RGB", (width, height + 3 * BAND), (0, 0, 0))
        canvas.paste(Image.fromarray(img), (0, BAND))
        draw = ImageDraw.Draw(canvas)
        draw.text((3, 2), f"{title}  step {t}/{steps}".strip(), fill=WHITE, font=font)
        latency = f"policy {policy_ms[t]:.1f} ms" if t < len(policy_ms) else "end"
        draw.text((3, height + BAND + 2), latency, fill=WHITE, font=font)
        draw.text((3, height + 2 * BAND + 2), outcome, fill=colour, font=font)
        out.append(np.asarray(canvas))
    return out


def write_video(frames: list[np.ndarray], path: str | os.PathLike, fps: int = 10) -> Path:
    """Write ``frames`` ((H, W, 3) uint8, all the same size) as an H.264 mp4; return the path."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def write_episode_video(result, path: str | os.PathLike, *, title: str = "", fps: int = 10) -> Path:
    """Annotated mp4 of a :class:`harness.rollout.EpisodeResult` run with ``videos=True``."""
    if not result.frames:
        raise ValueError(f"episode has no frames for {path}; run the rollout with videos=True")
    frames = annotate_frames(
        result.frames, result.policy_ms, result.success, title=title, failure_reason=result.failure_reason
    )
    return write_video(frames, path, fps=fps)
