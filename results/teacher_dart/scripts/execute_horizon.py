"""Success of a checkpoint that executes only the first E actions of each predicted chunk, then re-queries.

    MUJOCO_GL=egl python results/teacher_dart/scripts/execute_horizon.py CKPT E [SEED]

Five google visual-matching tasks x 10 episodes (indices 0-9 of SEED, default 0), the same episodes for
every E, so two horizons compare pairwise.
"""

from __future__ import annotations

import sys

import torch

import tasks as suites
from distill import load_policy
from harness.rollout import rollout

TASKS = ["open_middle_drawer", "open_bottom_drawer", "pick_coke_can_standing", "pick_coke_can_horizontal",
         "move_near"]


def main(ckpt: str, execute: int, seed: int = 0, episodes: int = 10) -> None:
    torch.set_num_threads(1)
    policy = load_policy(ckpt)
    full_predict = policy.predict
    policy.predict = lambda obs_list: full_predict(obs_list)[:, :execute]
    total = 0
    for task in TASKS:
        env = suites.make("simpler_google", task, seed=seed)
        wins = sum(rollout(policy, env, episode_index=i, seed=seed).success for i in range(episodes))
        env.close()
        total += wins
        print(f"{task}: {wins}/{episodes}", flush=True)
    print(f"execute {execute}: {total}/{episodes * len(TASKS)}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
