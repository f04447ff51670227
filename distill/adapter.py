"""Wrap a ``transformers`` decoder (Llama, Qwen2, Mistral families) as a :class:`distill.vla.VLA`.

    from transformers import Qwen2Config
    vla = from_transformers(Qwen2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4),
                            instructions=["pick up the can"])          # randomly initialised stack
    vla = from_transformers(pretrained_causal_lm, instructions=...)     # reuses the pretrained layers

The decoder's own layer stack, rotary embedding and final norm become the VLA backbone; the patch
encoder, instruction embedding, proprio token, action queries and action head of the reference teacher
are built around it at the decoder's hidden size. The decoder's token embedding and LM head are not used.
The layers are switched to bidirectional attention (see :mod:`distill.vla`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import transformers
from torch import nn

from distill.tokenizer import WordTokenizer
from distill.vla import ACTION_DIM, PROPRIO_DIM, VLA, VLAConfig, backbone_dict
from tasks.errors import UserInputError


def find_decoder(model: nn.Module) -> nn.Module:
    """The module holding ``layers``, ``rotary_emb`` and ``norm`` (``model.model`` for ``*ForCausalLM``)."""
    for candidate in (
        model,
        getattr(model, "model", None),
        getattr(getattr(model, "model", None), "model", None),
    ):
        if candidate is not None and all(hasattr(candidate, a) for a in ("layers", "rotary_emb", "norm")):
            return candidate
    raise UserInputError(
        f"{type(model).__name__} exposes no decoder with 'layers', 'rotary_emb' and 'norm' "
        "(supported: Llama, Qwen2, Mistral families and their *ForCausalLM wrappers)"
    )


def from_transformers(
    model_or_config: nn.Module | transformers.PretrainedConfig,
    *,
    instructions: Iterable[str] = (),
    vocab: list[str] | None = None,
    action_stats: Mapping | None = None,
    proprio_stats: Mapping | None = None,
    **vla_fields,
) -> VLA:
    """A :class:`VLA` whose decoder stack is that of ``model_or_config``.

    ``model_or_config``: a ``transformers`` model (its layers are reused, weights included) or a config
    (a randomly initialised stack is built). The tokenizer vocabulary comes from ``vocab`` or is built from
    ``instructions``; the normalisation statistics default to mean 0, std 1. ``vla_fields`` set other
    :class:`distill.vla.VLAConfig` fields (chunk, vision_grid, stem_channels, ...).
    """
    if isinstance(model_or_config, transformers.PretrainedConfig):
        backbone_cfg, decoder = model_or_config, None
    elif isinstance(model_or_config, nn.Module):
        found = find_decoder(model_or_config)
        backbone_cfg, decoder = found.config, (found.layers, found.rotary_emb, found.norm)
    else:
        raise TypeError(f"expected a transformers model or config, got {type(model_or_config).__name__}")
    if vocab is None:
        vocab = WordTokenizer.build(instructions).vocab
    config = VLAConfig(
        backbone=backbone_dict(backbone_cfg),
        vocab=list(vocab),
        action_stats=dict(action_stats or {"mean": [0.0] * ACTION_DIM, "std": [1.0] * ACTION_DIM}),
        proprio_stats=dict(proprio_stats or {"mean": [0.0] * PROPRIO_DIM, "std": [1.0] * PROPRIO_DIM}),
        **vla_fields,
    )
    return VLA(config, decoder=decoder)
