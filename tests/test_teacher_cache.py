"""The teacher cache (distill.teacher_cache): invariant to data order, looks up the right sample, round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_student import SyntheticDemos, tiny_config

from distill.data import collate
from distill.student import build_encapsulation
from distill.teacher_cache import TeacherCache, build_teacher_cache, teacher_states


def test_teacher_cache_is_invariant_to_data_order(teacher, data):
    enc = build_encapsulation(teacher, tiny_config()).eval()
    shuffled = SyntheticDemos(order=list(np.random.default_rng(3).permutation(len(data))))
    a = build_teacher_cache(teacher, enc, data, batch_size=5)
    b = build_teacher_cache(teacher, enc, shuffled, batch_size=7)
    assert torch.equal(a.sample_ids, b.sample_ids)
    ids = torch.tensor([it["sample_id"] for it in reversed(data.items)])
    for x, y in zip(a.lookup(ids), b.lookup(ids)):
        torch.testing.assert_close(x, y, atol=2e-3, rtol=2e-3)
    # the looked-up targets are those of the right sample
    item = data.items[5]
    one = collate(teacher, [item])
    with torch.no_grad():
        emb, states, final = teacher_states(teacher, one.inputs)
        s, act = enc(states, emb.attention_mask)
    s_c, a_c, f_c = a.lookup(one.sample_ids)
    torch.testing.assert_close(s_c, s, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(a_c, act, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_c, final, atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="not in the teacher cache"):
        a.lookup(torch.tensor([1001]))


def test_teacher_cache_roundtrip_and_duplicates(tmp_path, teacher, data):
    enc = build_encapsulation(teacher, tiny_config()).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    cache.save(tmp_path / "c.safetensors")
    loaded = TeacherCache.load(tmp_path / "c.safetensors")
    assert torch.equal(loaded.semantics, cache.semantics) and torch.equal(loaded.final, cache.final)
    with pytest.raises(ValueError, match="unique"):
        TeacherCache(torch.tensor([3, 3]), cache.semantics[:2], cache.actions[:2], cache.final[:2])


def test_teacher_cache_is_computed_at_the_stage_precision(monkeypatch, teacher, data):
    """The cache runs under the same autocast as stage 1 (bfloat16 on CUDA): here a CPU bfloat16 autocast stands
    in for it, and the cached targets are the bfloat16 computation, not the float32 one."""
    import distill.teacher_cache as tc

    enc = build_encapsulation(teacher, tiny_config()).eval()
    fp32 = build_teacher_cache(teacher, enc, data, batch_size=8)
    monkeypatch.setattr(tc, "stage_autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    bf16 = build_teacher_cache(teacher, enc, data, batch_size=8)
    # the cache's first batch recomputed as one batch: a bfloat16 matmul's rounding depends on the batch's shape
    # (CPUs with AMX pick other kernels for one row than for eight), so the comparison uses the same batch
    first = collate(teacher, list(data.items[:8]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        emb, states, final = teacher_states(teacher, first.inputs)
        _, act = enc([h.float() for h in states], emb.attention_mask)
    _, a_c, f_c = bf16.lookup(first.sample_ids)
    assert a_c.dtype == torch.float32 and f_c.dtype == torch.float32
    torch.testing.assert_close(a_c, act.float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(f_c, final.float(), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(bf16.final, fp32.final, atol=1e-6)  # the precision did change the targets
    assert tc.cache_dtype(torch.device("cpu")) == "float32" and tc.cache_dtype(torch.device("cuda")) == "bfloat16"
