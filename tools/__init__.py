"""Diagnostics that sit beside the harness: each module is a command with its own ``main``.

    python -m tools.pair_diff CKPT_A CKPT_B                      # offline gap between two checkpoints
    MUJOCO_GL=egl python -m tools.drawer_episodes CKPT open_middle_drawer   # what a policy does to a drawer
    MUJOCO_GL=egl python -m tools.expert_tolerance --suite simpler_google   # each task's tolerance of target error

They read checkpoints, demonstrations and simulators through the public code of ``distill``,
``tasks`` and ``harness``; none of them writes under ``results/``.
"""
