"""Analytic FLOPs of one VLA forward, counted from the parts actually executed.

    from distill.flops import flops_for_batch, forward_flops, measured_flops, routed_share
    batch = vla.prepare([obs])
    forward_flops(vla, batch_size=1, seq_len=seq_len(vla, batch), executed_layers=[0, 2, 5])
    # {"embed": ..., "per_layer": [L ints, 0 where skipped], "layers": ..., "head": ..., "total": ...}
    flops_for_batch(vla, batch, layer_mask)       # (B,) int64: per-row totals, rows may run different layers
    measured_flops(vla, batch, layer_mask)        # the same forward under torch.utils.flop_counter
    routed_share(vla, batch)                      # decoder layers (routable) vs vision, embedding, head

Every function takes a :class:`distill.vla.VLA` or a :class:`distill.hf_vla.HFVLA` (whose vision tower and
projector, a fixed cost like the reference encoder, are counted once per image size with :func:`count_flops`).

Conventions (the same as ``torch.utils.flop_counter.FlopCounterMode``, so the two agree exactly):

- One multiply-add is 2 FLOPs. Only matrix products are counted: linear layers (``mm``/``addmm``),
  convolutions, batched matmuls and the two products of attention (``Q K^T`` and ``softmax(.) V``).
  Bias additions, activations, softmax, RMSNorm and the vision encoder's GroupNorm and average pooling,
  rotary embedding, residual adds and the instruction embedding lookup are elementwise or gathers and
  count 0; for the reference sizes they are well under 1% of the total.
- Attention is counted over the whole padded sequence of N tokens, queries x keys, because that is what
  the kernel computes (padding keys are masked by an additive bias, not removed). With grouped-query
  attention the key/value projections are smaller (``num_key_value_heads``), while the score and weighted
  sum products run over every query head, as the kernels do after broadcasting K and V.
- The head reads only the K action-query tokens: final norm (0) + one linear layer D -> 7 per token.
- A routed student's router (:class:`distill.router.Router`) projects the V vision and T instruction tokens
  (D -> R each), then one linear 4R -> L: about 1% of a decoder layer at the small profile, counted in
  ``router`` (0 for a model without one).

Per decoder layer, for B rows, N tokens, hidden D, H query heads and G key/value heads of size d,
MLP width I (Llama-family SwiGLU: gate, up, down)::

    projections  2*B*N*D*(H*d + 2*G*d) + 2*B*N*(H*d)*D      # q, k, v, o
    attention    2*B*H*N*N*d + 2*B*H*N*N*d                 # scores, weighted sum
    mlp          3 * 2*B*N*D*I

PyTorch's flop counter has no formula for the CPU fused attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``) and would silently count 0 for attention on a
CPU with ``sdpa``; :func:`measured_flops` registers the standard SDPA formula for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from distill.vla import VLA


@dataclass(frozen=True)
class DecoderDims:
    """Sizes of one decoder layer that set its FLOPs."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


def decoder_dims(model: VLA) -> DecoderDims:
    """Decoder sizes of ``model`` read from its ``transformers`` backbone config."""
    cfg = model.backbone_config
    hidden = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    return DecoderDims(hidden, heads, kv_heads, head_dim, int(cfg.intermediate_size))


def seq_len(model: VLA, batch: Mapping[str, torch.Tensor]) -> int:
    """Tokens N per row that the decoder sees for a prepared ``batch``: 2 cameras' vision tokens (G*G, plus
    one keypoint token with ``vision_keypoints``) + 1 proprio + T + K.

    T is the padded instruction length of the batch (``input_ids`` is (B, T)), so every row of a batch has
    the same N; this equals ``model.embed(batch).hidden.shape[1]`` without running the encoder.
    """
    cfg = model.config
    return cfg.vision_tokens + 1 + int(batch["input_ids"].shape[1]) + cfg.chunk


def _conv_flops(stack: nn.Module, size: int) -> tuple[int, int]:
    """FLOPs of the ``Conv2d`` modules of ``stack`` on one square ``size`` x ``size`` input, taken in module
    order as a chain (each conv's output size feeds the next; a stride-1 padded conv keeps the size, so a
    residual block's two convs chain too). Returns (FLOPs, output side)."""
    flops = 0
    for conv in stack.modules():
        if isinstance(conv, nn.Conv2d):
            k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            size = (size + 2 * pad - k) // stride + 1  # square images, square kernels
            flops += 2 * size * size * conv.out_channels * (conv.in_channels // conv.groups) * k * k
    return flops, size


def vision_flops(model: VLA, batch_size: int) -> int:
    """FLOPs of the vision encoder (:class:`distill.vla.PatchEncoder` or :class:`distill.vla.DeepEncoder`, or an
    HF VLA's vision tower and projector, :meth:`distill.hf_vla.HFVLA.vision_flops_per_image`) on every camera of
    ``batch_size`` rows.

    Read off the modules themselves: every ``Conv2d`` of the stem with its output size; for the deep encoder
    the projection of the G*G pooled cells (C -> D each); with keypoints, the 1x1 heat-map conv on the
    keypoint map's S*S cells, the soft-argmax (one (K, S*S) x (S*S, 2) product) and the 2K -> D projection.
    GroupNorm, activations, average pooling, the softmax and the residual add are elementwise and count 0,
    as RMSNorm does in the decoder; on the deep stem of the small profile (GroupNorm at about 8 FLOPs per
    element) they would add about 4% to the stem's count, under 1% of a call.
    """
    cfg = model.config
    per_image = getattr(model, "vision_flops_per_image", None)
    if per_image is not None:  # a transformers vision tower and projector (distill.hf_vla): counted by count_flops
        return batch_size * len(cfg.cameras) * per_image()
    enc = model.vision
    if cfg.vision_encoder == "state":  # the MLP on every entity
        return batch_size * cfg.vision_tokens * sum(2 * lin.in_features * lin.out_features
                                                    for lin in enc.mlp if isinstance(lin, nn.Linear))
    per_image, _ = _conv_flops(enc.stem, cfg.image_size)
    if hasattr(enc, "grid_proj"):  # DeepEncoder: pooled cells -> tokens
        per_image += 2 * cfg.vision_grid ** 2 * enc.grid_proj.in_features * enc.grid_proj.out_features
    if enc.keypoints:
        cells = enc.cell_xy.shape[0]
        maps, proj = enc.keypoint_maps, enc.keypoint_proj
        per_image += 2 * cells * maps.out_channels * maps.in_channels + 2 * 2 * cells * maps.out_channels
        per_image += 2 * proj.in_features * proj.out_features
    return batch_size * len(cfg.cameras) * per_image


def embed_flops(model: VLA, batch_size: int) -> int:
    """FLOPs of :meth:`VLA.embed` for ``batch_size`` rows: :func:`vision_flops` + the proprio MLP."""
    proprio = sum(2 * lin.in_features * lin.out_features for lin in model.proprio_proj.modules()
                  if isinstance(lin, nn.Linear))
    return vision_flops(model, batch_size) + batch_size * proprio


def layer_flops(model: VLA, batch_size: int, n_tokens: int) -> int:
    """FLOPs of one decoder layer on ``batch_size`` rows of ``n_tokens`` tokens (see the module docstring)."""
    dims = decoder_dims(model)
    d, hd = dims.hidden, dims.head_dim
    tokens = batch_size * n_tokens
    projections = 2 * tokens * d * (dims.heads + 2 * dims.kv_heads) * hd + 2 * tokens * dims.heads * hd * d
    attention = 2 * 2 * batch_size * dims.heads * n_tokens * n_tokens * hd
    mlp = 3 * 2 * tokens * d * dims.intermediate
    return projections + attention + mlp


def head_flops(model: VLA, batch_size: int) -> int:
    """FLOPs of :meth:`VLA.head`: one linear D -> action_dim on each of the K action queries."""
    cfg = model.config
    return 2 * batch_size * cfg.chunk * cfg.hidden_size * cfg.action_dim


def router_flops(model: VLA, batch_size: int, n_tokens: int) -> int:
    """FLOPs of the model's router (0 without one) on ``batch_size`` rows of ``n_tokens`` tokens: the vision
    and instruction projections on their V and T tokens, and the gate 4R -> L. LayerNorms and the mean/max
    pooling are elementwise (0)."""
    router = getattr(model, "router", None)
    if router is None:
        return 0
    cfg = model.config
    vision = cfg.vision_tokens
    text = n_tokens - vision - 1 - cfg.chunk  # the padded instruction span
    proj = 2 * (vision * router.vision_proj.in_features * router.vision_proj.out_features
                + text * router.text_proj.in_features * router.text_proj.out_features)
    gate = 2 * router.gate.in_features * router.gate.out_features
    return batch_size * (proj + gate)


def forward_flops(model: VLA, batch_size: int, seq_len: int, executed_layers: Iterable[int] | int) -> dict:
    """Analytic FLOPs of one forward of ``batch_size`` rows of ``seq_len`` tokens through ``executed_layers``.

    ``executed_layers`` is the list of decoder layer indices run for every row, or an int k meaning
    layers 0..k-1. Returns ``{"embed", "router", "per_layer", "layers", "head", "total"}``: ints, except
    ``per_layer``, a list of L ints (0 for a skipped layer); ``router`` is 0 for a model without one.
    """
    num_layers = model.num_layers
    if isinstance(executed_layers, int):
        if not 0 <= executed_layers <= num_layers:
            raise ValueError(f"executed_layers count {executed_layers} out of range; valid: 0..{num_layers}")
        executed = set(range(executed_layers))
    else:
        executed = {int(i) for i in executed_layers}
        bad = sorted(i for i in executed if not 0 <= i < num_layers)
        if bad:
            raise ValueError(f"executed layer indices {bad} out of range; valid: 0..{num_layers - 1}")
    one = layer_flops(model, batch_size, seq_len)
    per_layer = [one if idx in executed else 0 for idx in range(num_layers)]
    embed, head = embed_flops(model, batch_size), head_flops(model, batch_size)
    router = router_flops(model, batch_size, seq_len)
    return {"embed": embed, "router": router, "per_layer": per_layer, "layers": sum(per_layer), "head": head,
            "total": embed + router + sum(per_layer) + head}


def routed_share(model: VLA, batch: Mapping[str, torch.Tensor]) -> dict:
    """How one full forward of ``batch`` (every decoder layer on) splits between the decoder layers, which
    a router can skip, and the fixed rest (vision, the other embeddings, the head), which always runs.

    Returns ``{"vision", "embed_other", "router", "head", "routed", "total"}`` in FLOPs (ints, for the whole batch)
    and ``"routed_share"``, ``"fixed_share"`` (floats summing to 1). The fixed share bounds a router's
    savings: at a budget of a fraction b of the layers, the call costs ``fixed_share + b * routed_share``.
    """
    b = int(batch["input_ids"].shape[0])
    out = forward_flops(model, b, seq_len(model, batch), model.num_layers)
    vision = vision_flops(model, b)
    result = {"vision": vision, "embed_other": out["embed"] - vision, "router": out["router"], "head": out["head"],
              "routed": out["layers"], "total": out["total"]}
    result["routed_share"] = out["layers"] / out["total"]
    result["fixed_share"] = 1.0 - result["routed_share"]
    return result


def flops_for_batch(model: VLA, batch: Mapping[str, torch.Tensor],
                    layer_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row analytic FLOPs (B,) int64 of ``model(batch, layer_mask)``; ``layer_mask`` (B, L) bool or None.

    Rows may run different layer sets (as :meth:`VLA.run_layers` does); every row has the batch's padded
    sequence length. The sum over rows is the FLOPs of the whole batched forward.
    """
    b = int(batch["proprio"].shape[0])
    n = seq_len(model, batch)
    if layer_mask is None:
        counts = torch.full((b,), model.num_layers, dtype=torch.int64)  # (B,)
    else:
        expected = (b, model.num_layers)
        if tuple(layer_mask.shape) != expected or layer_mask.dtype != torch.bool:
            raise ValueError(f"layer_mask must be a bool tensor of shape {expected} (batch, layers), got "
                             f"{layer_mask.dtype} {tuple(layer_mask.shape)}")
        counts = layer_mask.sum(1).cpu().to(torch.int64)  # (B,)
    fixed = embed_flops(model, 1) + router_flops(model, 1, n) + head_flops(model, 1)
    return fixed + counts * layer_flops(model, 1, n)  # (B,)


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The standard SDPA count (two batched products over every query head) for the CPU fused kernel."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict:
    """Formulas missing from ``torch.utils.flop_counter`` for kernels this model dispatches to on a CPU."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}
    return {op: _cpu_flash_attention_flop}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` counted by ``torch.utils.flop_counter.FlopCounterMode`` with the conventions
    and extra formulas of this module (what :func:`measured_flops` counts for a whole forward)."""
    with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def measured_flops(model: VLA, batch: Mapping[str, torch.Tensor], layer_mask: torch.Tensor | None = None) -> dict:
    """FLOPs of ``model(batch, layer_mask)`` counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Returns ``{"total": int, "by_op": {op name: int}}``. Counts every matmul, convolution and attention
    kernel that runs (see the module docstring for the conventions).
    """
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
        model(batch, layer_mask)
    by_op = {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op}
