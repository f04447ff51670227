"""How far a policy pushes a drawer shut on a close-drawer task, and what it does with the gripper.

    MUJOCO_GL=egl python results/teacher_dart/scripts/drawer_close.py CKPT close_middle_drawer   # 8 episodes, seed 0

Prints one line per episode: success, the drawer's opening at the start, its least, largest and final
opening (metres; success needs <= 0.05 at the end), and the fraction of steps with the gripper closed.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import tasks as suites
from distill import load_policy
from tasks.simpler.google import drawer_qpos


def main(ckpt: str, task: str, episodes: int = 8, seed: int = 0) -> None:
    torch.set_num_threads(1)
    level = task.split("_")[1]
    policy = load_policy(ckpt)
    for ep in range(episodes):
        env = suites.make("simpler_google", task, seed=seed)
        obs, _ = env.reset(seed=seed, options={"episode_index": ep})
        policy.reset()
        sim = env.unwrapped
        start, openings, grips, info = drawer_qpos(sim, level), [], [], {}
        for _ in range(sim.max_steps):
            action = policy.act(obs)
            grips.append(action[6] > 0)
            obs, _, terminated, truncated, info = env.step(action)
            openings.append(drawer_qpos(sim, level))
            if terminated or truncated:
                break
        print(f"episode {ep}: success {info.get('success')}, opening start {start:.3f} least {min(openings):.3f} "
              f"largest {max(openings):.3f} final {openings[-1]:.3f} m, gripper closed {np.mean(grips):.2f}")
        env.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
