"""Where a policy closes its gripper on an open-drawer task: distance to the handle, drawer opening.

    MUJOCO_GL=egl python results/teacher_dart/scripts/drawer_grasp.py CKPT open_middle_drawer   # 8 episodes, seed 0

Prints one line per episode: success, the closest the hand came to the handle, the step of the first
gripper-close command with the hand's distance and offset (world frame, metres) from the handle then,
and the largest and final drawer opening.
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
        closest, first_close, most_open, info = np.inf, None, 0.0, {}
        for t in range(sim.max_steps):
            action = policy.act(obs)
            eef = sim.eef_pose()[0]
            dist = float(np.linalg.norm(eef - handle))
            closest = min(closest, dist)
            if action[6] > 0 and first_close is None:
                first_close = (t, round(dist, 3), np.round(eef - handle, 3).tolist())
            obs, _, terminated, truncated, info = env.step(action)
            most_open = max(most_open, drawer_qpos(sim, level))
            if terminated or truncated:
                break
        print(f"episode {ep}: success {info.get('success')}, closest {closest:.3f} m, first close (step, dist, "
              f"offset) {first_close}, max opening {most_open:.3f} m, final {drawer_qpos(sim, level):.3f} m")
        env.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
