"""What a policy does to the drawer on a google drawer task, episode by episode.

    MUJOCO_GL=egl python results/teacher_dart/scripts/drawer_episodes.py CKPT open_middle_drawer    # 8 episodes, seed 0
    MUJOCO_GL=egl python results/teacher_dart/scripts/drawer_episodes.py CKPT close_middle_drawer

Prints one line per episode: success; the drawer's opening at the start and its least, largest and final
opening (metres; open needs >= 0.15 at the end, closed <= 0.05); the fraction of steps with the gripper
closed; the closest the hand came to the handle; and the step of the first gripper-close command with the
hand's distance and offset (world frame, metres) from the handle then.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import tasks as suites
from distill import load_policy
from tasks.simpler.google import _handle_local, cab_point, drawer_qpos


def main(ckpt: str, task: str, episodes: int = 8, seed: int = 0) -> None:
    torch.set_num_threads(1)
    level = task.split("_")[1]
    policy = load_policy(ckpt)
    for ep in range(episodes):
        env = suites.make("simpler_google", task, seed=seed)
        obs, _ = env.reset(seed=seed, options={"episode_index": ep})
        policy.reset()
        sim = env.unwrapped
        handle = cab_point(sim, _handle_local(sim, level))
        start, openings, grips, closest, first_close, info = drawer_qpos(sim, level), [], [], np.inf, None, {}
        for t in range(sim.max_steps):
            action = policy.act(obs)
            eef = sim.eef_pose()[0]
            dist = float(np.linalg.norm(eef - handle))
            closest = min(closest, dist)
            grips.append(action[6] > 0)
            if grips[-1] and first_close is None:
                first_close = (t, round(dist, 3), np.round(eef - handle, 3).tolist())
            obs, _, terminated, truncated, info = env.step(action)
            openings.append(drawer_qpos(sim, level))
            if terminated or truncated:
                break
        print(f"episode {ep}: success {info.get('success')}, opening start {start:.3f} least {min(openings):.3f} "
              f"largest {max(openings):.3f} final {openings[-1]:.3f} m, gripper closed {np.mean(grips):.2f}, "
              f"closest to handle {closest:.3f} m, first close (step, dist, offset) {first_close}")
        env.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
