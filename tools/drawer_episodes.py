"""What a policy does to the drawer on a google drawer task, episode by episode.

    MUJOCO_GL=egl python -m tools.drawer_episodes CKPT open_middle_drawer     # 8 episodes of seed 0
    MUJOCO_GL=egl python -m tools.drawer_episodes CKPT close_bottom_drawer --episodes 8 --seed 0

One line per episode: success; the drawer's opening at the start and its least, largest and final opening
(metres; an open task needs >= 0.15 at the end, a close task <= 0.05); the share of steps with the gripper
commanded closed; the closest the hand came to the handle; and the first gripper-close command: its step,
the hand's distance from the handle and the hand's offset from it (world frame, metres). The handle's
position is taken at the episode's start.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DRAWER_TASKS = tuple(f"{verb}_{level}_drawer" for verb in ("open", "close") for level in ("top", "middle", "bottom"))


@dataclass(frozen=True)
class FirstClose:
    """The first step whose commanded gripper action is > 0 (close), with the hand's distance from the handle
    and its offset ``hand - handle`` (world x, y, z), in metres."""

    step: int
    distance: float
    offset: tuple[float, float, float]


@dataclass(frozen=True)
class DrawerEpisode:
    """One episode's drawer trace; openings in metres (0 = shut)."""

    episode: int
    success: bool
    opening_start: float
    opening_least: float
    opening_largest: float
    opening_final: float
    gripper_closed: float
    closest_to_handle: float
    first_close: FirstClose | None

    def line(self) -> str:
        """The episode as one printed line."""
        close = ("none" if self.first_close is None else
                 f"step {self.first_close.step}, {self.first_close.distance:.3f} m, offset "
                 f"({', '.join(f'{v:+.3f}' for v in self.first_close.offset)})")
        return (f"episode {self.episode}: success {self.success}, opening start {self.opening_start:.3f} "
                f"least {self.opening_least:.3f} largest {self.opening_largest:.3f} final {self.opening_final:.3f} m, "
                f"gripper closed {self.gripper_closed:.2f}, closest to handle {self.closest_to_handle:.3f} m, "
                f"first close: {close}")


def drawer_level(task: str) -> str:
    """``top``, ``middle`` or ``bottom`` for a drawer task name; ``ValueError`` naming the valid tasks."""
    if task not in DRAWER_TASKS:
        raise ValueError(f"{task!r} is not a drawer task; valid tasks: {', '.join(DRAWER_TASKS)}")
    return task.split("_")[1]


def drawer_episode(policy, env, task: str, episode_index: int, seed: int = 0) -> DrawerEpisode:
    """Run ``policy`` (``reset()``, ``act(obs) -> (7,)``) for one episode of ``env``, a ``simpler_google``
    environment of the drawer task ``task``, and return its :class:`DrawerEpisode`."""
    from tasks.simpler.google import drawer_qpos

    level = drawer_level(task)
    obs, _ = env.reset(seed=seed, options={"episode_index": int(episode_index)})
    policy.reset()
    sim = env.unwrapped
    handle = sim.data.site(f"{level}_handle").xpos.copy()  # (3,) world frame, at the start
    start = drawer_qpos(sim, level)
    openings, grips, closest, first_close, info = [], [], np.inf, None, {}
    for t in range(sim.max_steps):
        action = np.asarray(policy.act(obs))
        offset = sim.eef_pose()[0] - handle  # (3,)
        distance = float(np.linalg.norm(offset))
        closest = min(closest, distance)
        grips.append(bool(action[6] > 0))
        if grips[-1] and first_close is None:
            first_close = FirstClose(t, distance, tuple(float(v) for v in offset))
        obs, _, terminated, truncated, info = env.step(action)
        openings.append(drawer_qpos(sim, level))
        if terminated or truncated:
            break
    return DrawerEpisode(episode=int(episode_index), success=bool(info.get("success", False)), opening_start=start,
                         opening_least=min(openings), opening_largest=max(openings), opening_final=openings[-1],
                         gripper_closed=float(np.mean(grips)), closest_to_handle=float(closest),
                         first_close=first_close)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint folder (teacher or student)")
    parser.add_argument("task", choices=DRAWER_TASKS, help="google drawer task")
    parser.add_argument("--episodes", type=int, default=8, help="episode indices 0..N-1 (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial states (default 0)")
    parser.add_argument("--variant", default="visual_matching", help="google variant (default visual_matching)")
    args = parser.parse_args(argv)

    import torch

    import tasks
    from distill import load_policy

    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint)
    for episode in range(args.episodes):
        env = tasks.make("simpler_google", args.task, variant=args.variant, seed=args.seed)
        print(drawer_episode(policy, env, args.task, episode, seed=args.seed).line(), flush=True)
        env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
