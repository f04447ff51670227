"""Every committed checkpoint under ``results/checkpoints/`` loads and acts exactly as when it was committed.

The expected chunks live in ``tests/data/committed_actions.json``. They were recorded from the code that
trained and committed the checkpoints; a refactor of loading, routing or the model must leave them unchanged.
Regenerate them only when a checkpoint is deliberately replaced::

    python tests/test_committed_checkpoints.py      # rewrites tests/data/committed_actions.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "results" / "checkpoints"
EXPECTED = Path(__file__).resolve().parent / "data" / "committed_actions.json"


def committed() -> list[Path]:
    """Every checkpoint folder under ``results/checkpoints`` (sorted by name)."""
    return sorted(p.parent for p in CHECKPOINTS.glob("*/config.json"))


def fixed_observations(config: dict, n: int = 2) -> list[dict]:
    """``n`` seeded observations shaped for the checkpoint's config (its cameras, image size, proprio size),
    each with an instruction of eight words drawn from its vocabulary."""
    vla = config["vla"]
    rng = np.random.default_rng(20261201)
    words = [w for w in vla["vocab"] if not w.startswith("[")]
    instructions = [" ".join(rng.choice(words, 8)) for _ in range(n)]
    size = vla["image_size"]
    return [
        {
            **{cam: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for cam in vla["cameras"]},
            "proprio": rng.normal(size=vla["proprio_dim"]).astype(np.float32),
            "instruction": instructions[i % len(instructions)],
        }
        for i in range(n)
    ]


def record(path: Path) -> dict:
    """What the policy in ``path`` does on :func:`fixed_observations`: per observation alone (the rollout path,
    one row) the post-processed chunk, the normalised chunk and the executed layers, and the batch of both."""
    import torch

    from distill import load_policy

    policy = load_policy(path)
    obs = fixed_observations(json.loads((path / "config.json").read_text()))
    out = {"single": []}
    for o in obs:
        actions = policy.predict([o])[0]  # (K, 7)
        batch = policy.model.prepare([o])
        chunk, layers = policy.model_call(batch)
        out["single"].append({"actions": actions.tolist(), "chunk": chunk[0].float().tolist(),
                              "executed_layers": [int(i) for i in layers[0]]})
    with torch.inference_mode():
        chunk, layers = policy.model_call(policy.model.prepare(obs))
    out["batch"] = {"chunk": chunk.float().tolist(), "executed_layers": [[int(i) for i in row] for row in layers]}
    return out


@pytest.mark.parametrize("path", committed(), ids=lambda p: p.name)
def test_committed_checkpoint_acts_as_recorded(path):
    expected = json.loads(EXPECTED.read_text())
    assert path.name in expected, f"{path.name} has no recorded actions; run python {Path(__file__).name}"
    want, got = expected[path.name], record(path)
    for w, g in zip(want["single"], got["single"], strict=True):
        assert g["executed_layers"] == w["executed_layers"]
        np.testing.assert_allclose(g["chunk"], w["chunk"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(g["actions"], w["actions"], atol=1e-5, rtol=0)
    assert got["batch"]["executed_layers"] == want["batch"]["executed_layers"]
    np.testing.assert_allclose(got["batch"]["chunk"], want["batch"]["chunk"], atol=1e-5, rtol=0)


def test_every_committed_checkpoint_is_recorded():
    expected = json.loads(EXPECTED.read_text())
    assert sorted(expected) == [p.name for p in committed()]
    assert len(expected) >= 8


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    EXPECTED.parent.mkdir(exist_ok=True)
    EXPECTED.write_text(json.dumps({p.name: record(p) for p in committed()}, indent=1))
    print(f"wrote {EXPECTED} ({len(committed())} checkpoints)", file=sys.stderr)
