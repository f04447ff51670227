"""The teacher cache of ActDistill stage 1: the frozen teacher's per-layer semantics and actions and its final
chunk for every training sample, looked up by ``sample_id`` (arXiv 2511.18082, Sec. 3.2).

    cache = build_teacher_cache(teacher, enc, dataset)   # enc: the trained stage-1 GraphEncapsulation
    cache.save("runs/distill/encapsulation/teacher_cache.safetensors")
    semantics, actions, final = cache.lookup(batch.sample_ids)

Keyed by sample id, so stage 2 may shuffle, resume or change batch size freely (the reference code indexes
its cache by data order and breaks when that order changes). Semantics are stored as float16 to halve the
cache's size. The cache is computed at the precision stage 1 trained at (:func:`stage_autocast`: bfloat16
autocast on CUDA, float32 on the CPU), so the targets stage 2 reads are the states the extractors were fitted on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from distill.data import ItemCollate, collate
from distill.graph import GraphEncapsulation
from distill.vla import VLA, Embedded

CUDA_STAGE_DTYPE = torch.bfloat16  # the autocast dtype of both stages and of the cache on CUDA


def stage_autocast(device: torch.device):
    """The autocast context of both distillation stages and of the teacher cache: bfloat16 on CUDA, off on CPU."""
    return torch.autocast("cuda", dtype=CUDA_STAGE_DTYPE, enabled=device.type == "cuda")


def cache_dtype(device: torch.device) -> str:
    """Name of the precision :func:`stage_autocast` gives on ``device`` (recorded with stage 1)."""
    return str(CUDA_STAGE_DTYPE if device.type == "cuda" else torch.float32).removeprefix("torch.")


def teacher_states(teacher: VLA, batch: Mapping[str, torch.Tensor]) -> tuple[Embedded, list[torch.Tensor], torch.Tensor]:
    """Embedding, the L per-layer outputs (B, N, D) and the final normalised chunk (B, K, 7) of ``teacher``."""
    emb = teacher.embed(batch)
    h, states = emb.hidden, []
    for idx in range(teacher.num_layers):
        h = teacher.run_layer(idx, h, emb)  # (B, N, D)
        states.append(h)
    return emb, states, teacher.head(h, emb)


class TeacherCache:
    """Stage-1 teacher outputs per training sample, looked up by ``sample_id``.

    ``sample_ids`` (M,) sorted int64; ``semantics`` (M, L, d_s) float16; ``actions`` (M, L, K, 7) and
    ``final`` (M, K, 7) float32 (normalised action chunks).
    """

    def __init__(self, sample_ids: torch.Tensor, semantics: torch.Tensor, actions: torch.Tensor, final: torch.Tensor):
        order = sample_ids.argsort()
        self.sample_ids = sample_ids[order].contiguous()
        dupes = self.sample_ids[1:][self.sample_ids[1:] == self.sample_ids[:-1]]
        if len(dupes):
            raise ValueError(f"sample ids must be unique; repeated: {dupes.unique()[:10].tolist()}")
        self.semantics = semantics[order].to(torch.float16).contiguous()
        self.actions = actions[order].float().contiguous()
        self.final = final[order].float().contiguous()

    def __len__(self) -> int:
        return len(self.sample_ids)

    def lookup(self, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher ``semantics`` (L, B, d_s) float32, ``actions`` (L, B, K, 7), ``final`` (B, K, 7) for ids (B,)."""
        pos = torch.searchsorted(self.sample_ids, sample_ids).clamp_max(len(self) - 1)  # (B,)
        missing = sample_ids[self.sample_ids[pos] != sample_ids]
        if len(missing):
            raise KeyError(f"sample ids {missing[:10].tolist()} are not in the teacher cache "
                           f"({len(self)} samples); was the dataset changed after stage 1?")
        return (self.semantics[pos].float().transpose(0, 1), self.actions[pos].transpose(0, 1), self.final[pos])

    def save(self, file: str | Path) -> None:
        """Write to a safetensors file (atomically)."""
        tmp = Path(str(file) + ".tmp")
        save_file({"sample_ids": self.sample_ids, "semantics": self.semantics, "actions": self.actions,
                   "final": self.final}, str(tmp))
        os.replace(tmp, file)

    @classmethod
    def load(cls, file: str | Path) -> TeacherCache:
        """The cache :meth:`save` wrote to ``file``."""
        t = load_file(str(file))
        return cls(t["sample_ids"], t["semantics"], t["actions"], t["final"])


@torch.no_grad()
def build_teacher_cache(teacher: VLA, enc: GraphEncapsulation, dataset: Dataset, batch_size: int = 64,
                        num_workers: int = 0, progress: bool = False) -> TeacherCache:
    """Run the frozen teacher and stage-1 encapsulation over every sample of ``dataset`` (any order), under
    :func:`stage_autocast` like stage 1's training (values stored as float16 semantics, float32 actions)."""
    from tqdm.auto import tqdm

    teacher.eval()
    enc.eval()
    ids, sems, acts, finals = [], [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=ItemCollate(teacher),
                        num_workers=num_workers, pin_memory=teacher.action_mean.device.type == "cuda")
    for items in tqdm(loader, desc="teacher cache", disable=not progress, dynamic_ncols=True):
        batch = collate(teacher, items)
        with stage_autocast(teacher.action_mean.device):
            emb, states, final = teacher_states(teacher, batch.inputs)
            s, a = enc([h.float() for h in states], emb.attention_mask)  # (L, B, d_s), (L, B, K, 7)
        ids.append(batch.sample_ids)
        sems.append(s.float().transpose(0, 1).cpu())
        acts.append(a.float().transpose(0, 1).cpu())
        finals.append(final.float().cpu())
    return TeacherCache(torch.cat(ids), torch.cat(sems), torch.cat(acts), torch.cat(finals))
