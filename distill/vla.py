"""The VLA interface and the reference teacher.

A :class:`VLA` turns observations into one token sequence, runs an ordered stack of ``transformers``
decoder layers over it, and reads an action chunk from learned action-query tokens::

    batch = vla.prepare([obs])               # images (B,H,W,3) uint8, proprio (B,8), input_ids (B,T), ...
    emb = vla.embed(batch)                   # Embedded: hidden (B,N,D), masks, rotary cos/sin, attention bias
    h = emb.hidden
    for idx in range(vla.num_layers):        # what forward(batch, layer_mask) does, with per-row skipping
        h = vla.run_layer(idx, h, emb)       # (B, N, D)
    chunk = vla.head(h, emb)                 # (B, K, 7) normalised actions

Token layout (N = 2*G*G + 1 + T + K): vision tokens of each camera (G*G each, camera order of
``config.cameras``), one proprio token, T instruction tokens (right-padded to the longest instruction in
the batch), K action queries. Position ids count only real tokens, so padding never shifts the rotary
positions of the action queries.

Attention is bidirectional (every token sees every non-padding token). The sequence is a prefix that is
encoded once per query, not generated token by token, so causality buys nothing; bidirectional
attention lets vision tokens condition on the instruction and the action queries sit anywhere. Padding
keys are masked by an additive bias, so padded rows give the same result as unpadded ones.

The reference teacher is ``VLA(teacher_config(...))``: a conv vision encoder over both 128x128 cameras
(``vision_encoder``: ``"patch"``, a patchify stem, or ``"deep"``, overlapping normalised convolutions to a
16x16 map pooled to the grid, see :class:`DeepEncoder`), a word-level instruction tokenizer built locally
(:mod:`distill.tokenizer`), an MLP proprio token, K=8 action queries, and Llama decoder layers (RMSNorm,
rotary positions, SwiGLU) built from a ``LlamaConfig``. :func:`distill.adapter.from_transformers` puts any Llama/Qwen2/Mistral-family decoder
stack in the same frame.

Training-time only, :attr:`VLAConfig.aux_targets` adds an auxiliary head (:class:`AuxHead`) that predicts
privileged simulator quantities (``tasks.base.PRIVILEGED_SHAPES``) from the vision tokens after the last decoder
layer; :meth:`VLA.forward_with_aux` trains it and :meth:`VLA.export` drops it, so the inference path
(``forward``, ``run_layers``, ``head``) never calls it and a saved teacher is a plain VLA.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import transformers
from torch import nn

from distill.tokenizer import WordTokenizer
from tasks.base import EXPERT_TARGET_DIM, PRIVILEGED_OBJECTS
from tasks.errors import UserInputError

CAMERAS = ("agentview", "wrist")
ACTION_DIM = 7
PROPRIO_DIM = 8
IMAGE_SIZE = 128
_STD_FLOOR = 1e-2  # normalisation never divides by less than this (e.g. an action dim that is always 0)
# VLAConfig.vision_encoder: PatchEncoder, DeepEncoder, or StateEncoder (the state-input ceiling: privileged
# scene-entity positions replace the cameras; a diagnostic, never a policy to report as a VLA)
VISION_ENCODERS = ("patch", "deep", "state")
HAND_POSITION = slice(0, 3)  # proprio dims of the absolute end-effector position xyz (tasks.base's layout)
POSITION_SCALE = 10.0  # metres -> decimetres: privileged positions (within ~0.5 m of the hand) become O(1)
# VLAConfig.aux_targets -> output width of its part of the aux head: expert_target = waypoint minus hand (3,
# decimetres), gripper-command logit, plan phase; objects = each entity's position minus hand (12 x 3,
# decimetres; the valid flag is read from the data as a mask, not predicted)
AUX_TARGETS = {"expert_target": EXPERT_TARGET_DIM, "objects": PRIVILEGED_OBJECTS * 3}

# Reference-teacher sizes. "small" trains on a 2-core CPU; "full" is for a GPU.
PROFILES: dict[str, dict] = {
    "small": {
        "hidden_size": 128,
        "num_layers": 12,
        "num_heads": 4,
        "intermediate_size": 384,
        "vision_grid": 4,
        "stem_channels": 32,
    },
    "full": {
        "hidden_size": 768,
        "num_layers": 16,
        "num_heads": 12,
        "intermediate_size": 2048,
        "vision_grid": 8,
        "stem_channels": 64,
    },
}


@dataclass
class VLAConfig:
    """Everything needed to rebuild a VLA (serialised to the checkpoint's ``config.json``).

    ``backbone`` is a ``transformers`` config as a dict (with ``model_type``); ``vocab`` the instruction
    tokenizer's vocabulary; ``action_stats`` / ``proprio_stats`` hold per-dimension ``mean`` and ``std``
    lists (``action_stats`` also ``min``/``max`` when known) used to normalise inputs and targets.
    """

    backbone: dict
    vocab: list[str]
    action_stats: dict[str, list[float]]
    proprio_stats: dict[str, list[float]]
    chunk: int = 8
    action_dim: int = ACTION_DIM
    proprio_dim: int = PROPRIO_DIM
    image_size: int = IMAGE_SIZE
    cameras: list[str] = field(default_factory=lambda: list(CAMERAS))
    vision_grid: int = 4
    stem_channels: int = 32
    vision_encoder: str = "patch"  # "patch": PatchEncoder; "deep": DeepEncoder (see VISION_ENCODERS)
    vision_coords: bool = False  # CoordConv: two pixel-coordinate channels enter the conv stem with RGB
    vision_keypoints: int = 0  # spatial-softmax keypoints per camera, one extra vision token each (0: off)
    max_text_len: int = 32
    attn_implementation: str = "sdpa"
    # training only: privileged quantities the aux head predicts (names of AUX_TARGETS, kept in that order);
    # empty: no head. A saved checkpoint always has [] (VLA.export drops the head).
    aux_targets: list[str] = field(default_factory=list)
    drop_hand_position: bool = False  # the model never sees the absolute hand position (proprio dims 0-2)

    def __post_init__(self) -> None:
        self.aux_targets = aux_target_names(self.aux_targets)
        if "model_type" not in self.backbone:
            raise UserInputError(
                f"backbone config needs a 'model_type' (e.g. 'llama'); got keys {sorted(self.backbone)}"
            )
        if self.image_size % (8 * self.vision_grid) != 0:
            raise UserInputError(
                f"image_size {self.image_size} must be divisible by 8 * vision_grid "
                f"(vision_grid={self.vision_grid}); valid grids: "
                f"{[g for g in range(1, self.image_size // 8 + 1) if self.image_size % (8 * g) == 0]}"
            )
        for name, stats, dim in (
            ("action_stats", self.action_stats, self.action_dim),
            ("proprio_stats", self.proprio_stats, self.proprio_dim),
        ):
            for key in ("mean", "std"):
                if key not in stats or len(stats[key]) != dim:
                    raise UserInputError(
                        f"{name}[{key!r}] must be a list of {dim} floats, got {stats.get(key)!r}"
                    )
        if self.chunk < 1:
            raise UserInputError(f"chunk must be >= 1, got {self.chunk}")
        if self.drop_hand_position and self.proprio_dim < HAND_POSITION.stop:
            raise UserInputError(f"drop_hand_position zeroes proprio dims 0-2 (the hand position), but proprio_dim "
                                 f"is {self.proprio_dim}; valid: proprio_dim >= 3 or drop_hand_position=False")
        if self.vision_encoder not in VISION_ENCODERS:
            raise UserInputError(
                f"unknown vision_encoder {self.vision_encoder!r}; valid: {', '.join(VISION_ENCODERS)}"
            )
        if self.vision_encoder == "state" and self.cameras:
            raise UserInputError(f"vision_encoder 'state' reads no cameras; give cameras=[] (got {self.cameras})")
        if self.stem_channels < 1:
            raise UserInputError(f"stem_channels must be >= 1, got {self.stem_channels}")
        if self.vision_keypoints < 0:
            raise UserInputError(f"vision_keypoints must be >= 0 (0: off), got {self.vision_keypoints}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise UserInputError(
                f"attn_implementation {self.attn_implementation!r} not supported; valid: sdpa, eager"
            )

    @property
    def hidden_size(self) -> int:
        return int(self.backbone["hidden_size"])

    @property
    def aux_dim(self) -> int:
        """Output width of the aux head: the sum of :data:`AUX_TARGETS` over ``aux_targets`` (0: no head)."""
        return sum(AUX_TARGETS[name] for name in self.aux_targets)

    @property
    def num_layers(self) -> int:
        return int(self.backbone["num_hidden_layers"])

    @property
    def tokens_per_camera(self) -> int:
        """Vision tokens of one camera: the G x G patch grid, plus the keypoint token when there is one."""
        return self.vision_grid ** 2 + (1 if self.vision_keypoints else 0)

    @property
    def vision_tokens(self) -> int:
        """Tokens before the proprio token: every camera's, or one per scene entity for the state encoder."""
        return PRIVILEGED_OBJECTS if self.vision_encoder == "state" else len(self.cameras) * self.tokens_per_camera

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> VLAConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(f"unknown VLA config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**copy.deepcopy(dict(data)))


def aux_target_names(names: Sequence[str]) -> list[str]:
    """``names`` checked against :data:`AUX_TARGETS` and put in its order (duplicates dropped), so that
    ``["objects", "expert_target"]`` and the reverse are the same config. Raises ``UserInputError`` naming an
    unknown name and the valid ones."""
    if isinstance(names, str):
        raise UserInputError(f"aux_targets must be a list of names, got the string {names!r}; "
                             f"valid names: {', '.join(AUX_TARGETS)}")
    unknown = [name for name in names if name not in AUX_TARGETS]
    if unknown:
        raise UserInputError(f"unknown aux target {unknown[0]!r}; valid: {', '.join(AUX_TARGETS)}")
    return [name for name in AUX_TARGETS if name in names]


def backbone_dict(config: transformers.PretrainedConfig) -> dict:
    """A decoder config as a JSON-able dict for :class:`VLAConfig`, without token-embedding settings.

    The VLA has its own embeddings, so the vocabulary is shrunk to one row and the special-token ids dropped.
    """
    data = config.to_diff_dict()
    data.update(
        model_type=config.model_type,
        vocab_size=1,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=False,
        tie_word_embeddings=False,
    )
    for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        data.pop(key, None)
    return data


def build_backbone_config(backbone: Mapping) -> transformers.PretrainedConfig:
    """Rebuild the ``transformers`` config of :attr:`VLAConfig.backbone`."""
    data = dict(backbone)
    model_type = data.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **data)


def teacher_config(
    profile: str, vocab: Sequence[str], action_stats: Mapping, proprio_stats: Mapping, **overrides
) -> VLAConfig:
    """Reference-teacher config for ``profile`` (``small`` or ``full``) with a Llama decoder backbone.

    ``overrides`` may change any profile size (hidden_size, num_layers, num_heads, num_kv_heads,
    intermediate_size, vision_grid, stem_channels) or any other :class:`VLAConfig` field.
    """
    if profile not in PROFILES:
        raise UserInputError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    sizes = {**PROFILES[profile], "num_kv_heads": None}
    for key in list(overrides):
        if key in sizes:
            sizes[key] = overrides.pop(key)
    heads = sizes["num_heads"]
    if sizes["hidden_size"] % heads or (sizes["hidden_size"] // heads) % 2:
        raise UserInputError(f"hidden_size {sizes['hidden_size']} must split into {heads} heads of even size")
    llama = transformers.LlamaConfig(
        hidden_size=sizes["hidden_size"],
        num_hidden_layers=sizes["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=sizes["num_kv_heads"] or heads,
        intermediate_size=sizes["intermediate_size"],
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
    )
    if overrides.get("vision_encoder") == "state":
        overrides.setdefault("cameras", [])  # the state ceiling reads no cameras
    stats = {
        "action_stats": {k: [float(x) for x in v] for k, v in action_stats.items()},
        "proprio_stats": {k: [float(x) for x in v] for k, v in proprio_stats.items()},
    }
    return VLAConfig(
        backbone=backbone_dict(llama),
        vocab=list(vocab),
        vision_grid=sizes["vision_grid"],
        stem_channels=sizes["stem_channels"],
        **stats,
        **overrides,
    )


@dataclass
class Embedded:
    """The token sequence entering the decoder stack, plus what every decoder layer needs.

    ``attention_bias`` is additive, (B, 1, 1, N) in the hidden dtype: 0 for real keys, the dtype's minimum
    for padding keys (broadcast over heads and queries). ``position_embeddings`` is the rotary
    ``(cos, sin)``, each (B, N, head_dim).
    """

    hidden: torch.Tensor  # (B, N, D)
    attention_mask: torch.Tensor  # (B, N) bool, False = padding
    position_ids: torch.Tensor  # (B, N) int64
    vision_mask: torch.Tensor  # (B, N) bool
    text_mask: torch.Tensor  # (B, N) bool, real instruction tokens only
    query_mask: torch.Tensor  # (B, N) bool, the K action-query tokens read by the head
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    attention_bias: torch.Tensor  # (B, 1, 1, N)
    # (vision_end, text_start, text_end): token positions [0, vision_end) are all vision tokens (no padding)
    # and [text_start, text_end) hold every instruction token, so readers can slice instead of masking
    spans: tuple[int, int, int]

    def select(self, rows: torch.Tensor) -> Embedded:
        """The same embedding for a subset of batch rows (``rows``: int64 indices or a (B,) bool mask)."""
        cos, sin = self.position_embeddings
        return Embedded(
            hidden=self.hidden[rows],
            attention_mask=self.attention_mask[rows],
            position_ids=self.position_ids[rows],
            vision_mask=self.vision_mask[rows],
            text_mask=self.text_mask[rows],
            query_mask=self.query_mask[rows],
            position_embeddings=(cos[rows], sin[rows]),
            attention_bias=self.attention_bias[rows],
            spans=self.spans,
        )



def assemble_tokens(vis: torch.Tensor, prop: torch.Tensor, text: torch.Tensor, queries: torch.Tensor,
                    text_mask: torch.Tensor, rotary_emb: nn.Module, dtype: torch.dtype,
                    position_offset: int = 0) -> Embedded:
    """The decoder input [vision (B,V,D), proprio (B,1,D), text (B,T,D), action queries (B,K,D)] as an
    :class:`Embedded`: padding of the instruction (``text_mask`` (B, T)) masked out by an additive bias,
    1-D positions over the real tokens starting at ``position_offset``, the spans the router reads. Shared by
    :class:`VLA` and :class:`distill.hf_vla.HFVLA`."""
    b, dev = vis.shape[0], vis.device
    hidden = torch.cat([vis, prop, text, queries], dim=1)  # (B, N, D)
    n_vis, n_text, k = vis.shape[1], text.shape[1], queries.shape[1]

    def ones(n: int) -> torch.Tensor:
        return torch.ones(b, n, dtype=torch.bool, device=dev)

    def zeros(n: int) -> torch.Tensor:
        return torch.zeros(b, n, dtype=torch.bool, device=dev)

    text_mask = text_mask.to(dev, torch.bool)  # (B, T)
    attention_mask = torch.cat([ones(n_vis + 1), text_mask, ones(k)], dim=1)  # (B, N)
    position_ids = (attention_mask.long().cumsum(1) - 1).clamp_min(0) + position_offset  # (B, N)
    bias = torch.zeros(b, 1, 1, attention_mask.shape[1], dtype=dtype, device=dev)  # (B, 1, 1, N)
    bias = bias.masked_fill(~attention_mask[:, None, None, :], torch.finfo(dtype).min)
    return Embedded(
        hidden=hidden,
        attention_mask=attention_mask,
        position_ids=position_ids,
        vision_mask=torch.cat([ones(n_vis), zeros(1 + n_text + k)], dim=1),
        text_mask=torch.cat([zeros(n_vis + 1), text_mask, zeros(k)], dim=1),
        query_mask=torch.cat([zeros(n_vis + 1 + n_text), ones(k)], dim=1),
        position_embeddings=rotary_emb(hidden, position_ids),  # cos, sin: (B, N, head_dim)
        attention_bias=bias,
        spans=(n_vis, n_vis + 1, n_vis + 1 + n_text),
    )

def _stem_input(images: torch.Tensor, dtype: torch.dtype, coord_grid: torch.Tensor | None) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) in [-1, 1], with the two CoordConv channels appended when
    ``coord_grid`` (1, 2, H, W) is given: (B, 5, H, W)."""
    x = _to_unit(images, dtype)  # (B, 3, H, W)
    if coord_grid is None:
        return x
    return torch.cat([x, coord_grid.to(x.dtype).expand(x.shape[0], -1, -1, -1)], dim=1)  # (B, 5, H, W)


def _to_unit(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) in [-1, 1] of ``dtype``."""
    return images.permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0


def _pixel_coords(size: int) -> torch.Tensor:
    """CoordConv channels: x and y of every pixel in [-1, 1], (1, 2, size, size)."""
    axis = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx, yy])[None]


def _cell_centres(cells: int) -> torch.Tensor:
    """(x, y) in [-1, 1] of the centre of each cell of a cells x cells map, row-major: (cells*cells, 2)."""
    axis = (torch.arange(cells, dtype=torch.float32) + 0.5) / cells * 2.0 - 1.0
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1)


def soft_argmax(logits: torch.Tensor, cell_xy: torch.Tensor) -> torch.Tensor:
    """Spatial soft-argmax: heat-map logits (B, K, S, S) -> (B, 2K) float32, the expected (x, y) of each
    map under the softmax over its S*S cells (x0, y0, x1, y1, ...); ``cell_xy`` (S*S, 2) from
    :func:`_cell_centres`. Finer than a cell: a peak between two cells lands between their centres."""
    heat = logits.flatten(2).float().softmax(-1)  # (B, K, S*S)
    return (heat @ cell_xy.float()).flatten(1)  # (B, 2K); cell_xy follows the model to bfloat16


class PatchEncoder(nn.Module):
    """Conv stem: (B, H, W, 3) uint8 -> (B, G*G, D) patch tokens with learned patch positions.

    A 4x4 patchify conv, a 2x2 stride-2 conv, then a conv whose stride gives the G x G grid: cheap next to
    the decoder stack, so that (as in large VLAs) the decoder layers dominate the cost of a forward.
    With ``coords`` (CoordConv), x and y pixel coordinates in [-1, 1] enter the stem as two extra channels,
    so every patch feature says where in the image it was seen: where the object is, relative to the
    gripper, is what a manipulation policy must read off its cameras.

    With ``keypoints`` K > 0, a 1x1 conv on the stride-8 feature map gives K heat maps; the softmax over
    each map's cells gives its expected (x, y) in [-1, 1] (a spatial soft-argmax, finer than a cell),
    and a linear layer turns the 2K coordinates into one more token, appended after the grid's. A G=4
    grid token covers 32 x 32 pixels; a keypoint can place a handle to a pixel.
    """

    def __init__(self, hidden_size: int, grid: int, channels: int, image_size: int, coords: bool = False,
                 keypoints: int = 0):
        super().__init__()
        last = image_size // 8 // grid  # kernel/stride of the last conv, after strides 4 and 2
        self.coords = coords
        if coords:
            self.register_buffer("coord_grid", _pixel_coords(image_size), persistent=False)  # (1, 2, H, W)
        self.stem = nn.Sequential(
            nn.Conv2d(5 if coords else 3, channels, 4, stride=4),
            nn.GELU(),
            nn.Conv2d(channels, 2 * channels, 2, stride=2),
            nn.GELU(),
            nn.Conv2d(2 * channels, hidden_size, last, stride=last),
        )
        self.pos = nn.Parameter(torch.zeros(grid * grid, hidden_size))
        self.keypoints = keypoints
        if keypoints:
            cells = image_size // 8  # the map after strides 4 and 2
            self.register_buffer("cell_xy", _cell_centres(cells), persistent=False)  # (S*S, 2)
            self.keypoint_maps = nn.Conv2d(2 * channels, keypoints, 1)
            self.keypoint_proj = nn.Linear(2 * keypoints, hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _stem_input(images, self.pos.dtype, self.coord_grid if self.coords else None)  # (B, 3 or 5, H, W)
        if not self.keypoints:
            x = self.stem(x)  # (B, D, G, G)
            return x.flatten(2).transpose(1, 2) + self.pos  # (B, G*G, D)
        feats = self.stem[:4](x)  # (B, 2C, S, S): S = image_size / 8
        grid = self.stem[4](feats).flatten(2).transpose(1, 2) + self.pos  # (B, G*G, D)
        xy = soft_argmax(self.keypoint_maps(feats), self.cell_xy).to(grid.dtype)  # (B, 2K)
        return torch.cat([grid, self.keypoint_proj(xy)[:, None]], dim=1)  # (B, G*G + 1, D)


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 4 groups (fewer when ``channels`` is not a multiple of 4): its statistics are per
    sample, so one observation at inference is normalised as in training."""
    return nn.GroupNorm(math.gcd(channels, 4), channels)


def _conv_norm(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 conv (padding 1, so stride 2 halves the map) -> GroupNorm -> ReLU."""
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)  # no bias: the norm removes it
    return nn.Sequential(conv, _group_norm(cout), nn.ReLU())


class ResidualBlock(nn.Module):
    """Basic ResNet block at stride 1: ReLU(x + GN(conv3x3(ReLU(GN(conv3x3(x)))))); (B, C, S, S) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = _group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))  # (B, C, S, S)
        return torch.relu(x + self.norm2(self.conv2(h)))  # (B, C, S, S)


class DeepEncoder(nn.Module):
    """Overlapping-conv encoder: (B, H, W, 3) uint8 -> (B, G*G, D) grid tokens (+ one keypoint token).

    Three 3x3 stride-2 convs with GroupNorm and ReLU (channels C/2, 3C/4, C for ``channels`` C; ReLU, as in
    ResNets, is the cheaper activation on a CPU at these map sizes) and one stride-1 residual block give a
    deep C x S x S map, S = H/8 (16 for 128 px cameras): every cell sees a 3x3 neighbourhood at each
    scale, so a feature can say where inside its 8 px cell an edge lies, which the patch stem's
    non-overlapping strides cannot. The map is average-pooled to the G x G grid and projected
    to D, plus learned positions: the token layout is :class:`PatchEncoder`'s.

    With ``keypoints`` K > 0, a 1x1 conv on the deep map gives K heat maps, read by a spatial soft-argmax
    (:func:`soft_argmax`, as robomimic's SpatialSoftmax) with a learned temperature, into one more token.
    ``coords`` adds CoordConv channels to the input as in :class:`PatchEncoder`.
    """

    def __init__(self, hidden_size: int, grid: int, channels: int, image_size: int, coords: bool = False,
                 keypoints: int = 0):
        super().__init__()
        widths = (max(1, channels // 2), max(1, 3 * channels // 4), channels)
        self.coords = coords
        if coords:
            self.register_buffer("coord_grid", _pixel_coords(image_size), persistent=False)  # (1, 2, H, W)
        self.stem = nn.Sequential(
            _conv_norm(5 if coords else 3, widths[0], 2),
            _conv_norm(widths[0], widths[1], 2),
            _conv_norm(widths[1], widths[2], 2),
            ResidualBlock(widths[2]),
        )
        self.cells = image_size // 8  # S: side of the deep map
        self.pool = self.cells // grid  # average-pooling window and stride down to the G x G grid
        self.grid_proj = nn.Linear(widths[2], hidden_size)
        self.pos = nn.Parameter(torch.zeros(grid * grid, hidden_size))
        self.keypoints = keypoints
        if keypoints:
            self.register_buffer("cell_xy", _cell_centres(self.cells), persistent=False)  # (S*S, 2)
            self.keypoint_maps = nn.Conv2d(widths[2], keypoints, 1)
            self.keypoint_log_temperature = nn.Parameter(torch.zeros(()))  # softmax(logits / T), T = exp(.)
            self.keypoint_proj = nn.Linear(2 * keypoints, hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _stem_input(images, self.pos.dtype, self.coord_grid if self.coords else None)  # (B, 3 or 5, H, W)
        feats = self.stem(x)  # (B, C, S, S)
        pooled = nn.functional.avg_pool2d(feats, self.pool)  # (B, C, G, G)
        tokens = self.grid_proj(pooled.flatten(2).transpose(1, 2)) + self.pos  # (B, G*G, D)
        if not self.keypoints:
            return tokens
        logits = self.keypoint_maps(feats) * torch.exp(-self.keypoint_log_temperature)  # (B, K, S, S)
        xy = soft_argmax(logits, self.cell_xy).to(tokens.dtype)  # (B, 2K)
        return torch.cat([tokens, self.keypoint_proj(xy)[:, None]], dim=1)  # (B, G*G + 1, D)


class StateEncoder(nn.Module):
    """The state-input ceiling's "vision": (B, E, 4) privileged scene entities (position minus the hand, valid
    flag; ``tasks.simpler.env.SimplerEnv.privileged_state``) -> (B, E, D) tokens, one per entity, through a
    two-layer MLP plus a learned per-entity position. Same decoder, chunking and loss as the teacher: what it
    reaches says how much of the gap is perception."""

    def __init__(self, hidden_size: int, entities: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
        self.pos = nn.Parameter(torch.zeros(entities, hidden_size))

    def forward(self, objects: torch.Tensor) -> torch.Tensor:
        scaled = torch.cat([objects[..., :3] * POSITION_SCALE, objects[..., 3:]], dim=-1)  # decimetres: O(1)
        return self.mlp(scaled) + self.pos  # (B, E, D)


class AuxHead(nn.Module):
    """Training-time auxiliary head: the mean of the vision tokens' hidden states after the last decoder layer,
    (B, D) -> (B, A) through LayerNorm, Linear(D, D), GELU, Linear(D, A) (A = :attr:`VLAConfig.aux_dim`).

    It reads the decoder's output rather than the embedded vision tokens so that the aux loss shapes the decoder
    layers too (the ones a router later chooses among), not only the encoder: its gradient reaches the encoder
    through every layer, so the privileged quantities must be carried by the vision-token stream that the action
    queries attend to at every depth. At the last layer the vision tokens' outputs feed nothing else (the action
    head reads only the queries), so the head reads a slot inference leaves unused; below it, the aux and action
    gradients share the stream. The mean over tokens keeps the head small; tokens carry learned positions, so
    where something is can still be encoded in their content.
    """

    def __init__(self, hidden_size: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                 nn.Linear(hidden_size, out_dim))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)  # (B, A)


class _TraceSlot:
    """Holds the frozen vision trace of :meth:`VLA.fast_inference`; a copy or a pickle of the model starts
    with an empty slot (the trace is made again on first use), so models copy and travel as before."""

    def __init__(self):
        self.module = None

    def __deepcopy__(self, memo) -> _TraceSlot:
        return _TraceSlot()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.module = None


class VLA(nn.Module):
    """Vision-language-action model over an ordered stack of ``transformers`` decoder layers.

    ``decoder`` (optional) supplies the stack as ``(layers, rotary_emb, norm)`` modules, e.g. taken from a
    pretrained model by :func:`distill.adapter.from_transformers`; otherwise it is built, randomly
    initialised, from ``config.backbone``.
    """

    def __init__(self, config: VLAConfig, decoder: tuple[nn.ModuleList, nn.Module, nn.Module] | None = None):
        super().__init__()
        self.config = config
        self.backbone_config = build_backbone_config(config.backbone)
        if decoder is None:
            model = transformers.AutoModel.from_config(
                self.backbone_config, attn_implementation=config.attn_implementation
            )
            decoder = (model.layers, model.rotary_emb, model.norm)
            self.backbone_config = model.config
        self.layers, self.rotary_emb, self.norm = decoder
        self.set_attn_implementation(config.attn_implementation)
        for layer in self.layers:
            layer.self_attn.is_causal = False  # bidirectional: see the module docstring
        self.tokenizer = WordTokenizer(config.vocab)

        d = config.hidden_size
        if config.vision_encoder == "state":
            self.vision = StateEncoder(d, PRIVILEGED_OBJECTS)
        else:
            encoder = DeepEncoder if config.vision_encoder == "deep" else PatchEncoder
            self.vision = encoder(
                d, config.vision_grid, config.stem_channels, config.image_size, coords=config.vision_coords,
                keypoints=config.vision_keypoints,
            )
        self.camera_embed = nn.Parameter(torch.zeros(len(config.cameras), d))
        self.text_embed = nn.Embedding(len(config.vocab), d)
        self.proprio_proj = nn.Sequential(nn.Linear(config.proprio_dim, d), nn.GELU(), nn.Linear(d, d))
        self.action_queries = nn.Parameter(torch.zeros(config.chunk, d))
        self.action_head = nn.Linear(d, config.action_dim)
        # The conv stem and the proprio MLP keep PyTorch's fan-in init: with N(0, 0.02) weights the image
        # content reaching the vision tokens was ~2% of their scale (drowned by the patch positions) and
        # the proprio token ~0.006, and training sat at the per-dimension median action for thousands of steps.
        for module in (self.text_embed, self.action_head):
            module.apply(_init_weights)
        for p in (self.vision.pos, self.camera_embed, self.action_queries):
            nn.init.normal_(p, std=0.02)

        def stat(stats: Mapping, key: str) -> torch.Tensor:
            return torch.tensor(stats[key], dtype=torch.float32)

        self.register_buffer("action_mean", stat(config.action_stats, "mean"), persistent=False)
        self.register_buffer(
            "action_std", stat(config.action_stats, "std").clamp_min(_STD_FLOOR), persistent=False
        )
        self.register_buffer("proprio_mean", stat(config.proprio_stats, "mean"), persistent=False)
        self.register_buffer(
            "proprio_std", stat(config.proprio_stats, "std").clamp_min(_STD_FLOOR), persistent=False
        )
        # built last, so the rest of the model initialises exactly as without it (same seed, same weights)
        self.aux_head = AuxHead(d, config.aux_dim) if config.aux_targets else None

    # -- interface ------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def attn_implementation(self) -> str:
        return self.backbone_config._attn_implementation

    def set_attn_implementation(self, name: str) -> None:
        """Switch every layer's attention kernel (``sdpa`` or ``eager``); results agree up to rounding."""
        if name not in ("sdpa", "eager"):
            raise UserInputError(f"attention implementation {name!r} not supported; valid: sdpa, eager")
        for layer in self.layers:
            layer.self_attn.config._attn_implementation = name
        self.backbone_config._attn_implementation = name

    def prepare(self, obs_list: Sequence[Mapping], device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
        """Batch a list of observations (numpy or torch values) on the model's device (or ``device``).

        Returns ``{camera: (B,H,W,3) uint8, "proprio": (B,8) float32, "input_ids": (B,T) int64,
        "text_mask": (B,T) bool}``. Raises ``ValueError`` naming the key for a missing entry or wrong shape.
        """
        return prepare_observations(self.config, self.tokenizer, obs_list,
                                    self.action_mean.device if device is None else device)

    def embed(self, batch: Mapping[str, torch.Tensor]) -> Embedded:
        """Tokens and per-layer inputs for ``batch`` (from :meth:`prepare`); see :class:`Embedded`."""
        cfg = self.config
        dtype = self.action_queries.dtype
        b = batch["proprio"].shape[0]
        if cfg.vision_encoder == "state":
            vis = self.vision(batch["objects"].to(dtype))  # (B, E, D)
        else:
            images = torch.cat([batch[cam] for cam in cfg.cameras])  # (C*B, H, W, 3)
            vis = self._encode_images(images)  # (C*B, P, D)
            p = vis.shape[1]
            vis = vis.view(len(cfg.cameras), b, p, -1) + self.camera_embed[:, None, None, :]  # (C, B, P, D)
            vis = vis.transpose(0, 1).reshape(b, len(cfg.cameras) * p, -1)  # (B, C*P, D)
        proprio = (batch["proprio"].float() - self.proprio_mean) / self.proprio_std  # (B, 8)
        if cfg.drop_hand_position:  # normalised 0 (the data's mean): where the hand is comes from the cameras
            proprio[:, HAND_POSITION] = 0.0
        prop = self.proprio_proj(proprio.to(dtype))[:, None]  # (B, 1, D)
        text = self.text_embed(batch["input_ids"])  # (B, T, D)
        queries = self.action_queries.expand(b, -1, -1)  # (B, K, D)
        return assemble_tokens(vis, prop, text, queries, batch["text_mask"], self.rotary_emb, dtype)

    def fast_inference(self, enabled: bool = True) -> None:
        """Run the vision encoder as a frozen TorchScript trace in CPU float32 inference (no grad, eval mode):
        the same operations with the module overhead and constant work folded away, about 20% faster on the
        reference encoder at batch 1 (1 thread), to within 1e-7 of the eager output. The trace is taken on the
        first such call and holds the weights of that moment: call this again after changing them. Training,
        autograd, other devices and dtypes, and dispatch modes (the FLOP counter) always run the eager
        encoder. Policies (:class:`distill.checkpoint.VLAPolicy`) turn it on; ``enabled=False`` turns it off."""
        self.__dict__["_fast_vision"] = _TraceSlot() if enabled else None  # not a submodule: not in the state dict

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The vision encoder on (C*B, H, W, 3) uint8 images: the frozen trace of :meth:`fast_inference` where it
        applies, else the module itself."""
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        slot = self.__dict__.get("_fast_vision")
        if not (slot is not None and not self.training and not torch.is_grad_enabled()
                and images.device.type == "cpu" and self.vision.pos.dtype == torch.float32
                and _get_current_dispatch_mode() is None):
            return self.vision(images)
        if slot.module is None:
            import warnings

            with warnings.catch_warnings():  # torch.jit's deprecation notice and GroupNorm's traced size check
                warnings.simplefilter("ignore")
                slot.module = torch.jit.freeze(torch.jit.trace(self.vision.eval(), images, check_trace=False))
        return slot.module(images)

    def run_layer(self, idx: int, hidden: torch.Tensor, emb: Embedded) -> torch.Tensor:
        """Decoder layer ``idx`` on ``hidden`` (B, N, D) -> (B, N, D); ``emb`` must hold the same B rows."""
        out = self.layers[idx](
            hidden,
            attention_mask=emb.attention_bias,
            position_ids=emb.position_ids,
            position_embeddings=emb.position_embeddings,
        )
        return out[0] if isinstance(out, tuple) else out  # older transformers layers return a tuple

    def run_layers(
        self, hidden: torch.Tensor, emb: Embedded, layer_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The decoder stack on ``hidden`` (B, N, D); ``layer_mask`` (B, L) bool picks the layers per row.

        A skipped layer is the identity and is not computed for that row: layers on for every row run on
        the whole batch, layers on for some rows run on those rows only, layers off for all are skipped.
        """
        if layer_mask is None:
            for idx in range(self.num_layers):
                hidden = self.run_layer(idx, hidden, emb)
            return hidden
        expected = (hidden.shape[0], self.num_layers)
        if tuple(layer_mask.shape) != expected or layer_mask.dtype != torch.bool:
            raise ValueError(
                f"layer_mask must be a bool tensor of shape {expected} (batch, layers), got "
                f"{layer_mask.dtype} {tuple(layer_mask.shape)}"
            )
        on_all = layer_mask.all(0).tolist()
        on_any = layer_mask.any(0).tolist()
        for idx in range(self.num_layers):
            if on_all[idx]:
                hidden = self.run_layer(idx, hidden, emb)
            elif on_any[idx]:
                rows = layer_mask[:, idx].nonzero().squeeze(1)  # (R,)
                hidden = hidden.index_copy(0, rows, self.run_layer(idx, hidden[rows], emb.select(rows)))
        return hidden

    def head(self, hidden: torch.Tensor, emb: Embedded) -> torch.Tensor:
        """Normalised action chunk (B, K, 7) from the action-query tokens of ``hidden`` (B, N, D)."""
        queries = hidden[:, -self.config.chunk :]  # (B, K, D): the layout puts the queries last
        return self.action_head(self.norm(queries)).float()  # (B, K, 7)

    def forward(
        self, batch: Mapping[str, torch.Tensor], layer_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalised action chunk (B, K, 7); ``layer_mask`` (B, L) bool as in :meth:`run_layers`."""
        emb = self.embed(batch)
        return self.head(self.run_layers(emb.hidden, emb, layer_mask), emb)

    # -- training-time auxiliary head (never called by the inference path) ----------------------------

    def aux_predict(self, hidden: torch.Tensor, emb: Embedded) -> dict[str, torch.Tensor]:
        """The aux head on the last layer's ``hidden`` (B, N, D): one float32 tensor per ``config.aux_targets``
        name, ``"expert_target"`` (B, 5) (waypoint minus hand in decimetres (3), gripper-command logit, phase)
        and ``"objects"`` (B, 12, 3) (entity position minus hand, decimetres). Raises ``UserInputError`` for a
        VLA without aux targets."""
        if self.aux_head is None:
            raise UserInputError(f"this VLA has no aux head (aux_targets is empty); valid aux targets to train "
                                 f"one: {', '.join(AUX_TARGETS)}")
        pooled = hidden[:, : emb.spans[0]].mean(1)  # (B, D): the vision tokens come first, unpadded
        out = self.aux_head(pooled).float()  # (B, A)
        parts = dict(zip(self.config.aux_targets, out.split([AUX_TARGETS[n] for n in self.config.aux_targets], 1)))
        if "objects" in parts:
            parts["objects"] = parts["objects"].view(-1, PRIVILEGED_OBJECTS, 3)  # (B, 12, 3)
        return parts

    def forward_with_aux(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training forward with every layer: the normalised chunk (B, K, 7), computed exactly as :meth:`forward`
        computes it, and :meth:`aux_predict` on the same last-layer hidden states."""
        emb = self.embed(batch)
        hidden = self.run_layers(emb.hidden, emb)  # (B, N, D)
        return self.head(hidden, emb), self.aux_predict(hidden, emb)

    def with_aux_targets(self, targets: Sequence[str]) -> VLA:
        """A new VLA with this one's weights and config, but ``aux_targets=targets``: a freshly initialised aux
        head where ``targets`` is not empty (drawn from a fork of torch's RNG, which is left as it was), none
        where it is. On the CPU, float32, in eval mode; this model is not changed."""
        config = VLAConfig.from_dict({**self.config.to_dict(), "aux_targets": list(targets)})
        with torch.random.fork_rng(devices=[]):
            model = VLA(config)
        model.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("aux_head.")},
                              strict=not config.aux_targets)
        return model.eval()

    def export(self) -> VLA:
        """The inference model: this VLA itself without aux targets, else :meth:`with_aux_targets` ``([])``, a
        plain VLA with the same weights and no aux head (same FLOPs and latency as one trained without it)."""
        return self if self.aux_head is None else self.with_aux_targets([])

    # -- action normalisation -------------------------------------------------------------------------

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Raw actions (..., 7) -> normalised (zero mean, unit std per dimension on the training data)."""
        return (actions - self.action_mean) / self.action_std

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised actions (..., 7) -> raw action scale (not clipped)."""
        return actions * self.action_std + self.action_mean


def postprocess_actions(raw: np.ndarray) -> np.ndarray:
    """Clip raw actions (..., 7) to [-1, 1] and binarise the gripper (last dim) to -1 (open) / +1 (close)."""
    out = np.clip(raw, -1.0, 1.0).astype(np.float32)
    out[..., -1] = np.where(raw[..., -1] > 0, 1.0, -1.0)
    return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def prepare_observations(cfg: VLAConfig, tokenizer: WordTokenizer, obs_list: Sequence[Mapping],
                         device: str | torch.device) -> dict[str, torch.Tensor]:
    """:meth:`VLA.prepare` without the model (so DataLoader workers can batch on the CPU)."""
    if len(obs_list) == 0:
        raise ValueError("prepare() needs at least one observation")
    img_shape = (cfg.image_size, cfg.image_size, 3)
    batch: dict[str, torch.Tensor] = {}
    for cam in cfg.cameras:
        frames = [_as_tensor(obs, cam, img_shape) for obs in obs_list]
        batch[cam] = torch.stack(frames).to(device=device, dtype=torch.uint8)  # (B, H, W, 3)
    if cfg.vision_encoder == "state":
        objects = [_as_tensor(obs, "objects", (PRIVILEGED_OBJECTS, 4)) for obs in obs_list]
        batch["objects"] = torch.stack(objects).to(device=device, dtype=torch.float32)  # (B, E, 4)
    proprio = [_as_tensor(obs, "proprio", (cfg.proprio_dim,)) for obs in obs_list]
    batch["proprio"] = torch.stack(proprio).to(device=device, dtype=torch.float32)  # (B, 8)
    texts = []
    for i, obs in enumerate(obs_list):
        if "instruction" not in obs or not isinstance(obs["instruction"], str):
            raise UserInputError(
                f"observation {i} needs an 'instruction' string, got {obs.get('instruction')!r}"
            )
        texts.append(obs["instruction"])
    ids, mask = tokenizer.batch_encode(texts, cfg.max_text_len)
    batch["input_ids"], batch["text_mask"] = ids.to(device), mask.to(device)  # (B, T)
    return batch


def _as_tensor(obs: Mapping, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key not in obs or obs[key] is None:
        raise UserInputError(f"observation is missing {key!r} (expected shape {shape}); got keys {sorted(obs)}")
    value = obs[key]
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    if tuple(tensor.shape) != shape:
        raise UserInputError(f"observation {key!r}: got shape {tuple(tensor.shape)}, expected {shape}")
    return tensor
