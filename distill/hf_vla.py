"""A real vision-language model from ``transformers`` as a VLA teacher: PaliGemma (pi0's backbone), SmolVLM and
Idefics3 (SmolVLA's), loaded from a folder on disk only.

    actdistill train-teacher --init hf:/models/paligemma-3b-pt-224 --data data/simpler --out runs/pg_teacher \
        --device cuda --lr 5e-5 --batch-size 32 --steps 20000      # trains the action head, fine-tunes the rest
    actdistill distill --teacher runs/pg_teacher --data data/simpler --budgets 0.5 --out runs/pg_distill \
        --device cuda

    from distill.hf_vla import HFVLA
    vla = HFVLA.from_pretrained("/models/smolvlm2-500m", instructions=["pick up the coke can"],
                                action_stats=stats, proprio_stats=stats8, chunk=8)
    batch = vla.prepare([obs])             # the same batch as distill.vla.VLA.prepare
    chunk = vla(batch)                     # (B, K, 7) normalised actions

:class:`HFVLA` exposes what :class:`distill.vla.VLA` exposes to the routed student, the trainers and the FLOPs
count (``prepare``, ``embed`` -> :class:`distill.vla.Embedded`, ``run_layer``, ``run_layers`` with per-row
layer masks, ``head``, ``num_layers``, ``config``, action normalisation), so ``StudentVLA.from_teacher``,
``train-teacher``, ``distill`` and :mod:`distill.flops` take it as they take the reference teacher.

What runs, per call (the family's own modules, nothing re-implemented):

- Each camera (``agentview``, ``wrist``; uint8, any square size) is resized in torch to the vision tower's
  ``image_size`` (bilinear with antialiasing; the families' processors resample bicubically in PIL, a
  difference fine-tuning absorbs) and normalised with the folder's ``preprocessor_config.json`` mean and std
  (0.5 / 0.5, the SigLIP value all three families use, where the folder has none). No processor class is
  instantiated: one global image per camera, no image splitting (SmolVLM's processor without
  ``do_image_splitting``). The vision tower and its projector (PaliGemma's ``multi_modal_projector``;
  SmolVLM / Idefics3's ``connector``, pixel shuffle then a linear map) give the image tokens.
- The instruction goes through the folder's own tokenizer (``AutoTokenizer``, local files only) with its
  special tokens; a folder without one falls back to :class:`distill.tokenizer.WordTokenizer` over the
  training instructions, whose ids index the language model's own input embeddings (Gemma's include its
  ``sqrt(D)`` scale).
- The proprio state is one token (a fresh MLP), and K learned action queries follow.
- The language model's decoder layers run over ``[image tokens of each camera, proprio, instruction, queries]``,
  called as the family's own model calls them: ``position_embeddings`` from its ``rotary_emb`` (1-D rotary
  positions counting real tokens only, from 1 for PaliGemma, whose positions are 1-indexed, from 0 otherwise)
  and an additive attention bias. Attention is bidirectional over every non-padding token, as pi0 and SmolVLA
  treat the image-and-language prefix and as the reference teacher does (see :mod:`distill.vla`): the sequence is
  encoded once per query, never generated. The language model's final norm, then a linear map D -> 7 per
  query, gives the chunk. The LM head (vocabulary logits) is not kept.

Qwen2-VL / Qwen2.5-VL are not supported: their M-RoPE takes 3-D (time, height, width) position ids and their
vision tower takes flattened patch sequences with a grid per image, which this layout does not build.

The checkpoint (kind ``hf_vla``, :data:`distill.checkpoint.POLICY_KINDS`) holds the VLM's config (so it rebuilds
without the source folder), our head and statistics in ``config.json``, every weight in ``model.safetensors``,
and the tokenizer's files in ``tokenizer/``. Routed students of it are kind ``hf_routed_student``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from distill.adapter import find_decoder
from distill.checkpoint import (
    CONFIG,
    WEIGHTS,
    VLAPolicy,
    check_state_dict,
    checkpoint_kind,
    file_hash,
    load_weights,
    parse_dtype,
    read_config,
)
from distill.flops import count_flops
from distill.routed import BUDGET_RULE, RoutedMixin, StudentPolicy
from distill.tokenizer import WordTokenizer, pad_ids
from distill.vla import (
    ACTION_DIM,
    CAMERAS,
    IMAGE_SIZE,
    PROPRIO_DIM,
    VLA,
    Embedded,
    assemble_tokens,
    prepare_observations,
)
from tasks.errors import MissingInputError, UserInputError

HF_PREFIX = "hf:"  # command-line spec of a raw VLM folder: hf:PATH
HF_KIND = "hf_vla"  # checkpoint kinds (distill.checkpoint.POLICY_KINDS)
HF_STUDENT_KIND = "hf_routed_student"
TOKENIZER_DIR = "tokenizer"  # the checkpoint's copy of the VLM's tokenizer files
PREPROCESSOR = "preprocessor_config.json"
TEXT_MODELS = ("gemma", "llama")  # language models whose decoder layers are called as documented above
_STD_FLOOR = 1e-2  # as distill.vla: normalisation never divides by less than this


@dataclass(frozen=True)
class Family:
    """Where a VLM family keeps its parts: the ``transformers`` model and config classes, and the attribute
    names, on the inner model (``model.model``), of the vision tower, the projector and the language model."""

    model_class: str
    config_class: str
    vision: str
    projector: str
    language: str
    position_offset: int  # position id of the first token (PaliGemma counts from 1)
    pixel_shuffle: bool  # the projector merges scale_factor x scale_factor patches into one token


FAMILIES = {
    "paligemma": Family("PaliGemmaForConditionalGeneration", "PaliGemmaConfig", "vision_tower",
                        "multi_modal_projector", "language_model", 1, False),
    "smolvlm": Family("SmolVLMForConditionalGeneration", "SmolVLMConfig", "vision_model", "connector", "text_model",
                      0, True),
    "idefics3": Family("Idefics3ForConditionalGeneration", "Idefics3Config", "vision_model", "connector",
                       "text_model", 0, True),
}


def family_of(model_type: str, source: str) -> Family:
    """The :class:`Family` of a VLM config's ``model_type``; raises ``UserInputError`` naming ``source`` and the
    supported families otherwise."""
    if model_type not in FAMILIES:
        raise UserInputError(f"{source} is a {model_type!r} model; supported VLM families: {', '.join(FAMILIES)} "
                             "(Qwen2-VL's 3-D rotary positions are not supported)")
    return FAMILIES[model_type]


@dataclass
class HFVLAConfig:
    """Everything needed to rebuild an :class:`HFVLA` (serialised to the checkpoint's ``config.json``).

    ``hf_config`` is the VLM's ``transformers`` config as a dict (with ``model_type``, one of :data:`FAMILIES`);
    ``tokenizer`` is ``"hf"`` (the VLM folder's tokenizer, stored in the checkpoint's ``tokenizer/``) or
    ``"word"`` (:class:`distill.tokenizer.WordTokenizer` over ``vocab``); ``image_mean`` / ``image_std`` the
    per-channel pixel normalisation; ``image_size`` the observation's camera size (the tower's own size is
    ``vision_size``); ``source`` the folder the weights came from (a record, never read again).
    """

    hf_config: dict
    action_stats: dict[str, list[float]]
    proprio_stats: dict[str, list[float]]
    tokenizer: str = "word"
    vocab: list[str] = field(default_factory=list)
    source: str = ""
    chunk: int = 8
    action_dim: int = ACTION_DIM
    proprio_dim: int = PROPRIO_DIM
    image_size: int = IMAGE_SIZE
    cameras: list[str] = field(default_factory=lambda: list(CAMERAS))
    max_text_len: int = 32
    attn_implementation: str = "sdpa"
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def __post_init__(self) -> None:
        family_of(self.hf_config.get("model_type", "<none>"), "hf_config")
        text_type = self.text_config.get("model_type")
        if text_type not in TEXT_MODELS:
            raise UserInputError(f"the VLM's language model is {text_type!r}; supported: {', '.join(TEXT_MODELS)}")
        if self.tokenizer not in ("hf", "word"):
            raise UserInputError(f"tokenizer {self.tokenizer!r} unknown; valid: hf (the VLM's own), word")
        if self.tokenizer == "word":
            if not self.vocab:
                raise UserInputError("tokenizer 'word' needs a vocabulary (the training instructions' words)")
            if len(self.vocab) > int(self.text_config["vocab_size"]):
                raise UserInputError(f"the word vocabulary has {len(self.vocab)} entries but the language model "
                                     f"embeds only {self.text_config['vocab_size']} ids; give a folder with a "
                                     "tokenizer")
        for name, stats, dim in (("action_stats", self.action_stats, self.action_dim),
                                 ("proprio_stats", self.proprio_stats, self.proprio_dim)):
            for key in ("mean", "std"):
                if key not in stats or len(stats[key]) != dim:
                    raise UserInputError(f"{name}[{key!r}] must be a list of {dim} floats, got {stats.get(key)!r}")
        if self.chunk < 1:
            raise UserInputError(f"chunk must be >= 1, got {self.chunk}")
        if not self.cameras:
            raise UserInputError(f"an HF VLA reads at least one camera; valid: {', '.join(CAMERAS)}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise UserInputError(f"attn_implementation {self.attn_implementation!r} not supported; valid: sdpa, "
                                 "eager")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise UserInputError(f"image_mean and image_std need 3 values (RGB), got {self.image_mean}, "
                                 f"{self.image_std}")

    @property
    def family(self) -> str:
        return str(self.hf_config["model_type"])

    @property
    def text_config(self) -> dict:
        return self.hf_config["text_config"]

    @property
    def hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.text_config["num_hidden_layers"])

    @property
    def vision_size(self) -> int:
        """Side of the square image the vision tower takes (its config's ``image_size``)."""
        return int(self.hf_config["vision_config"]["image_size"])

    @property
    def tokens_per_camera(self) -> int:
        """Image tokens of one camera: the tower's patch grid, divided by ``scale_factor ** 2`` for the pixel
        shuffle of SmolVLM / Idefics3."""
        patches = (self.vision_size // int(self.hf_config["vision_config"]["patch_size"])) ** 2
        if FAMILIES[self.family].pixel_shuffle:
            patches //= int(self.hf_config.get("scale_factor", 2)) ** 2
        return patches

    @property
    def vision_tokens(self) -> int:
        """Tokens before the proprio token: every camera's image tokens."""
        return len(self.cameras) * self.tokens_per_camera

    @property
    def vision_encoder(self) -> str:
        """``"hf"``: read by code shared with :class:`distill.vla.VLAConfig` (only ``"state"`` changes it)."""
        return "hf"

    @property
    def aux_targets(self) -> list[str]:
        """No auxiliary head (the reference teacher's training-time option; never on an HF VLA)."""
        return []

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> HFVLAConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(f"unknown HF VLA config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**copy.deepcopy(dict(data)))


class HFTokenizer:
    """A ``transformers`` tokenizer behind :class:`distill.tokenizer.WordTokenizer`'s ``batch_encode``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batch_encode(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (B, T) int64 and mask (B, T) bool (False = padding), the model's special tokens
        included; T = longest, at least 1, at most ``max_len``."""
        encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=True,
                                 max_length=max_len)["input_ids"]
        return pad_ids(encoded, self.pad_id)

    def save(self, folder: Path) -> None:
        """Write the tokenizer's files to ``folder`` (``save_pretrained``)."""
        self.tokenizer.save_pretrained(str(folder))


def _hf_config_dict(config: transformers.PretrainedConfig) -> dict:
    data = config.to_dict()
    for key in ("_name_or_path", "transformers_version"):
        data.pop(key, None)
    return data


def _build_vlm(config: HFVLAConfig) -> nn.Module:
    """A randomly initialised VLM of ``config.hf_config`` (a loader then overwrites its weights), float32."""
    family = FAMILIES[config.family]
    hf_config = getattr(transformers, family.config_class).from_dict(copy.deepcopy(config.hf_config))
    return getattr(transformers, family.model_class)(hf_config).float()


class HFVLA(nn.Module):
    """A VLM's vision tower, projector and language-model decoder layers with a proprio token, action queries and
    an action head; the interface of :class:`distill.vla.VLA` (see the module docstring).

    ``vlm`` is the loaded ``*ForConditionalGeneration`` whose parts are kept (``None``: built from
    ``config.hf_config`` with random weights, for a loader to fill); ``tokenizer`` the VLM's tokenizer (required
    when ``config.tokenizer == "hf"``).
    """

    CHECKPOINT_KIND = HF_KIND

    def __init__(self, config: HFVLAConfig, vlm: nn.Module | None = None, tokenizer=None):
        super().__init__()
        self.config = config
        family = FAMILIES[config.family]
        inner = (vlm if vlm is not None else _build_vlm(config)).model
        self.vision = getattr(inner, family.vision)  # (M, 3, S, S) -> last_hidden_state (M, patches, Dv)
        self.projector = getattr(inner, family.projector)  # (M, patches, Dv) -> (M, P, D)
        decoder = find_decoder(getattr(inner, family.language))
        self.text_embed = decoder.embed_tokens
        self.layers, self.rotary_emb, self.norm = decoder.layers, decoder.rotary_emb, decoder.norm
        self.backbone_config = decoder.config
        self.position_offset = family.position_offset
        self.set_attn_implementation(config.attn_implementation)
        for layer in self.layers:
            layer.self_attn.is_causal = False  # bidirectional: see the module docstring
        if config.tokenizer == "hf":
            if tokenizer is None:
                raise MissingInputError("this HF VLA uses the VLM's own tokenizer, but none was given")
            self.tokenizer = tokenizer if isinstance(tokenizer, HFTokenizer) else HFTokenizer(tokenizer)
        else:
            self.tokenizer = WordTokenizer(config.vocab)

        d = config.hidden_size
        self.proprio_proj = nn.Sequential(nn.Linear(config.proprio_dim, d), nn.GELU(), nn.Linear(d, d))
        self.action_queries = nn.Parameter(torch.zeros(config.chunk, d))
        self.action_head = nn.Linear(d, config.action_dim)
        for p in (self.action_head.weight, self.action_queries):  # the reference teacher's init of both
            nn.init.normal_(p, std=0.02)
        nn.init.zeros_(self.action_head.bias)
        for name, values in (("image_mean", config.image_mean), ("image_std", config.image_std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(3, 1, 1), persistent=False)
        for name, stats in (("action", config.action_stats), ("proprio", config.proprio_stats)):
            self.register_buffer(f"{name}_mean", torch.tensor(stats["mean"], dtype=torch.float32), persistent=False)
            std = torch.tensor(stats["std"], dtype=torch.float32).clamp_min(_STD_FLOOR)
            self.register_buffer(f"{name}_std", std, persistent=False)
        self._vision_flops: int | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, action_stats: Mapping, proprio_stats: Mapping,
                        instructions: Sequence[str] = (), chunk: int = 8, **config_fields) -> HFVLA:
        """An HF VLA over the VLM saved in the folder ``path`` (``from_pretrained(..., local_files_only=True)``,
        float32), with a fresh proprio MLP, action queries and head. The folder's tokenizer is used where it has
        one, else a word tokenizer over ``instructions``. ``config_fields`` set other :class:`HFVLAConfig` fields.
        Raises ``MissingInputError`` for a folder without ``config.json``, ``UserInputError`` for another family.
        """
        path = Path(path)
        if not (path / "config.json").is_file():
            raise MissingInputError(f"{str(path)!r} is not a transformers model folder (no config.json); give the "
                                    "folder save_pretrained wrote (config.json + *.safetensors)")
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "<none>")
        family = family_of(model_type, str(path))
        vlm = getattr(transformers, family.model_class).from_pretrained(str(path), local_files_only=True,
                                                                        dtype=torch.float32)
        tokenizer = _folder_tokenizer(path)
        stats = {"action_stats": {k: [float(x) for x in v] for k, v in action_stats.items()},
                 "proprio_stats": {k: [float(x) for x in v] for k, v in proprio_stats.items()}}
        mean_std = _pixel_normalisation(path)
        config = HFVLAConfig(hf_config=_hf_config_dict(vlm.config), tokenizer="hf" if tokenizer else "word",
                             vocab=[] if tokenizer else WordTokenizer.build(instructions).vocab, source=str(path),
                             chunk=chunk, **mean_std, **stats, **config_fields)
        return cls(config, vlm=vlm, tokenizer=tokenizer)

    # -- the interface of distill.vla.VLA: the same computation, borrowed so the two cannot drift ------------

    num_layers = VLA.num_layers
    attn_implementation = VLA.attn_implementation
    set_attn_implementation = VLA.set_attn_implementation
    run_layer = VLA.run_layer
    run_layers = VLA.run_layers
    head = VLA.head
    forward = VLA.forward
    normalize_actions = VLA.normalize_actions
    unnormalize_actions = VLA.unnormalize_actions

    def prepare(self, obs_list: Sequence[Mapping],
                device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
        """Batch observations as :meth:`distill.vla.VLA.prepare` does: ``{camera: (B,H,W,3) uint8, "proprio":
        (B,8) float32, "input_ids": (B,T) int64, "text_mask": (B,T) bool}``, with this model's tokenizer."""
        return prepare_observations(self.config, self.tokenizer, obs_list,
                                    self.action_mean.device if device is None else device)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Uint8 camera images (M, H, W, 3) -> the tower's input (M, 3, S, S): resized, normalised."""
        size = self.config.vision_size
        x = images.permute(0, 3, 1, 2).float() / 255.0  # (M, 3, H, W) in [0, 1]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return ((x - self.image_mean) / self.image_std).to(self.action_queries.dtype)  # (M, 3, S, S)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower and projector on (M, 3, S, S) -> image tokens (M, P, D)."""
        return self.projector(self.vision(pixel_values=pixels).last_hidden_state)

    def vision_flops_per_image(self) -> int:
        """FLOPs of :meth:`image_tokens` on one image, counted once with ``torch.utils.flop_counter`` (the tower's
        matmuls, convolutions and attention; see :mod:`distill.flops`) and cached."""
        if self._vision_flops is None:
            size = self.config.vision_size
            probe = torch.zeros(1, 3, size, size, device=self.action_mean.device, dtype=self.action_queries.dtype)
            with torch.no_grad():
                self._vision_flops = count_flops(lambda: self.image_tokens(probe))
        return self._vision_flops

    def embed(self, batch: Mapping[str, torch.Tensor]) -> Embedded:
        """Tokens and per-layer inputs for ``batch`` (from :meth:`prepare`), laid out as the reference teacher's
        (:class:`distill.vla.Embedded`): image tokens of each camera, proprio, instruction, action queries."""
        cfg = self.config
        dtype = self.action_queries.dtype
        b = batch["proprio"].shape[0]
        images = torch.cat([batch[cam] for cam in cfg.cameras])  # (C*B, H, W, 3)
        vis = self.image_tokens(self.pixels(images)).to(dtype)  # (C*B, P, D)
        p = vis.shape[1]
        vis = vis.view(len(cfg.cameras), b, p, -1).transpose(0, 1)  # (B, C, P, D)
        vis = vis.reshape(b, len(cfg.cameras) * p, -1)  # (B, C*P, D)
        proprio = (batch["proprio"].float() - self.proprio_mean) / self.proprio_std  # (B, 8)
        prop = self.proprio_proj(proprio.to(dtype))[:, None]  # (B, 1, D)
        text = self.text_embed(batch["input_ids"]).to(dtype)  # (B, T, D)
        queries = self.action_queries.expand(b, -1, -1)  # (B, K, D)
        return assemble_tokens(vis, prop, text, queries, batch["text_mask"], self.rotary_emb, dtype,
                               self.position_offset)

    def export(self) -> HFVLA:
        """The inference model: this model itself (an HF VLA has no training-only parts)."""
        return self

    def save_side_files(self, path: Path) -> None:
        """Write the VLM's tokenizer (when it uses one) to ``path/tokenizer`` beside the checkpoint's weights."""
        if isinstance(self.tokenizer, HFTokenizer):
            self.tokenizer.save(Path(path) / TOKENIZER_DIR)


class HFStudentVLA(RoutedMixin, HFVLA):
    """A routed student of an :class:`HFVLA`: its weights plus a :class:`distill.router.Router` over the language
    model's decoder layers; skipped layers are not computed (as :class:`distill.routed.StudentVLA`)."""

    CHECKPOINT_KIND = HF_STUDENT_KIND

    def __init__(self, config: HFVLAConfig, budget: float, router_dim: int = 128, tokenizer=None):
        super().__init__(config, tokenizer=tokenizer)
        self.attach_router(budget, router_dim)

    @classmethod
    def from_teacher(cls, teacher: HFVLA, budget: float, router_dim: int = 128) -> HFStudentVLA:
        """A student whose weights are a copy of ``teacher``'s and whose router is freshly initialised."""
        config = HFVLAConfig.from_dict(teacher.config.to_dict())
        student = cls(config, budget, router_dim, tokenizer=teacher.tokenizer)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any(not name.startswith("router.") for name in missing):
            raise ValueError(f"teacher weights do not fit the student: missing {missing}, unexpected {unexpected}")
        return student.to(next(teacher.parameters()).device)


# -- folders, specs and checkpoints ------------------------------------------------------------------------------


def parse_hf_spec(spec: str) -> Path:
    """``"hf:PATH"`` -> ``PATH``: a raw ``transformers`` VLM folder. Raises ``UserInputError`` for another
    spec and ``MissingInputError`` for a folder without ``config.json``."""
    if not str(spec).startswith(HF_PREFIX):
        raise UserInputError(f"{spec!r} is not an {HF_PREFIX}PATH spec; e.g. "
                             f"{HF_PREFIX}/models/paligemma-3b-pt-224")
    path = Path(str(spec)[len(HF_PREFIX):])
    if not (path / "config.json").is_file():
        raise MissingInputError(f"{spec!r}: {str(path)!r} is not a transformers model folder (no config.json)")
    return path


def _folder_tokenizer(path: Path) -> HFTokenizer | None:
    """The tokenizer saved in the folder ``path`` (local files only), or None where it has no tokenizer files."""
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    return HFTokenizer(transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True))


def _pixel_normalisation(path: Path) -> dict[str, list[float]]:
    """``image_mean`` / ``image_std`` of the folder's ``preprocessor_config.json`` (0.5 / 0.5 without one)."""
    file = path / PREPROCESSOR
    data = json.loads(file.read_text()) if file.is_file() else {}
    out = {}
    for key in ("image_mean", "image_std"):
        value = data.get(key, 0.5)
        out[key] = [float(v) for v in (value if isinstance(value, list) else [value] * 3)]
        if not all(math.isfinite(v) for v in out[key]):
            raise UserInputError(f"{file}: {key} {value!r} is not finite")
    return out


def _open(path: str | Path, kinds: tuple[str, ...],
          build: Callable[[dict, HFVLAConfig, HFTokenizer | None], HFVLA]) -> tuple[HFVLA, dict]:
    """Read the checkpoint ``path`` of one of ``kinds``, build its model with ``build(config_json, cfg, tokenizer)``
    and load the weights (float32, eval)."""
    path = Path(path)
    config = read_config(path)
    kind = checkpoint_kind(config, path / CONFIG)
    if kind not in kinds:
        raise UserInputError(f"{path / CONFIG} is a {kind!r} checkpoint, not one of {', '.join(kinds)}; open it "
                             "with distill.load_policy")
    cfg = HFVLAConfig.from_dict(config["vla"])
    tokenizer = None
    if cfg.tokenizer == "hf":
        tokenizer = _folder_tokenizer(path / TOKENIZER_DIR)
        if tokenizer is None:
            raise MissingInputError(f"checkpoint {str(path)!r} uses the VLM's tokenizer but has no "
                                    f"{TOKENIZER_DIR}/ with its files")
    model = build(config, cfg, tokenizer)
    tensors = load_weights(path)
    check_state_dict(model, tensors, str(path / WEIGHTS))
    model.load_state_dict(tensors)
    return model.eval(), config


def load_hf_vla(path: str | Path, device: str | torch.device = "cpu") -> tuple[HFVLA, dict]:
    """The :class:`HFVLA` stored at ``path`` (kind ``hf_vla``; float32, eval, on ``device``) and its config.json."""
    model, config = _open(path, (HF_KIND,), lambda _, cfg, tok: HFVLA(cfg, tokenizer=tok))
    return model.to(device), config


def load_hf_policy(path: str | Path, device: str | torch.device = "cpu",
                   dtype: str | torch.dtype = "float32") -> VLAPolicy:
    """:class:`distill.checkpoint.VLAPolicy` over the HF VLA at ``path`` (the loader of kind ``hf_vla``)."""
    model, _ = load_hf_vla(path, device)
    return VLAPolicy(model.to(parse_dtype(dtype)), checkpoint_hash=file_hash(Path(path) / WEIGHTS), path=str(path))


def load_hf_student(path: str | Path, device: str | torch.device = "cpu") -> tuple[HFStudentVLA, dict]:
    """The :class:`HFStudentVLA` stored at ``path`` (kind ``hf_routed_student``) and its config.json."""

    def build(config: dict, cfg: HFVLAConfig, tokenizer) -> HFStudentVLA:
        spec = config.get("student") or {}
        if spec.get("rule") != BUDGET_RULE:
            raise UserInputError(f"unknown budget rule {spec.get('rule')!r} in {Path(path) / CONFIG}; "
                                 f"valid: {BUDGET_RULE}")
        return HFStudentVLA(cfg, spec["budget"], spec["router"]["router_dim"], tokenizer=tokenizer)

    model, config = _open(path, (HF_STUDENT_KIND,), build)
    return model.to(device), config


def load_hf_student_policy(path: str | Path, device: str | torch.device = "cpu",
                           dtype: str | torch.dtype = "float32") -> StudentPolicy:
    """:class:`distill.routed.StudentPolicy` for the HF student at ``path`` (the loader of kind
    ``hf_routed_student``)."""
    model, _ = load_hf_student(path, device)
    return StudentPolicy(model.to(parse_dtype(dtype)), checkpoint_hash=file_hash(Path(path) / WEIGHTS),
                         path=str(path))
