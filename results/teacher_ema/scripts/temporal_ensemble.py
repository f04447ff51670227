"""Success of a checkpoint that re-queries every step and executes the average of every chunk that
covers the step (ACT-style temporal ensembling), against the plain open-loop chunk.

    MUJOCO_GL=egl python results/teacher_ema/scripts/temporal_ensemble.py CKPT M [SEED] [all]

M is the weight decay over a prediction's age: the prediction made a steps ago gets weight exp(-M * a)
(M = 0: a plain mean). M < 0 runs the plain policy (open-loop chunks). The episodes are those of
``results/teacher_dart/scripts/execute_horizon.py`` (five google visual-matching tasks x 10), so the
figures pair with its; ``all`` runs every google task (10 visual-matching episodes each) instead.
"""

from __future__ import annotations

import sys
from collections import deque

import numpy as np
import torch

import tasks as suites
from distill import load_policy
from distill.vla import postprocess_actions
from harness.rollout import rollout

TASKS = ["open_middle_drawer", "open_bottom_drawer", "pick_coke_can_standing", "pick_coke_can_horizontal",
         "move_near"]


class TemporalEnsemble:
    """Wraps a policy: one model call per step; the executed action averages the overlapping chunks."""

    def __init__(self, policy, decay: float):
        self.policy, self.decay = policy, decay
        self.chunks: deque = deque()

    def reset(self) -> None:
        self.policy.reset()
        self.chunks.clear()

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def act(self, obs) -> np.ndarray:
        model = self.policy.model
        batch = model.prepare([obs])
        chunk, _ = self.policy.model_call(batch)  # (1, K, 7) normalised
        raw = model.unnormalize_actions(chunk)[0].float().cpu().numpy()  # (K, 7)
        self.chunks.appendleft(raw)  # age 0 first
        k = raw.shape[0]
        while len(self.chunks) > k:
            self.chunks.pop()
        rows = [c[age] for age, c in enumerate(self.chunks)]  # each chunk's prediction for this step
        w = np.exp(-self.decay * np.arange(len(rows)))
        action = (w[:, None] * np.stack(rows)).sum(0) / w.sum()
        return postprocess_actions(action)


def main(ckpt: str, decay: float, seed: int = 0, episodes: int = 10, every_task: bool = False) -> None:
    torch.set_num_threads(1)
    names = suites.tasks("simpler_google") if every_task else TASKS
    policy = load_policy(ckpt)
    runner = policy if decay < 0 else TemporalEnsemble(policy, decay)
    total = 0
    for task in names:
        env = suites.make("simpler_google", task, seed=seed)
        wins = sum(rollout(runner, env, episode_index=i, seed=seed).success for i in range(episodes))
        env.close()
        total += wins
        print(f"{task}: {wins}/{episodes}", flush=True)
    print(f"decay {decay}: {total}/{episodes * len(names)}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0,
         every_task=len(sys.argv) > 4 and sys.argv[4] == "all")
