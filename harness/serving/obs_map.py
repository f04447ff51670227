"""How our observation becomes a served policy's request, and how its reply becomes our 7-D actions.

    from harness.serving.obs_map import load_obs_map
    obs_map = load_obs_map("openpi-libero")          # a preset, or a JSON file: load_obs_map("my_map.json")
    request = obs_map.to_request(obs)                # {"observation/image": (224, 224, 3) uint8, ...}
    actions = obs_map.to_actions(reply)              # (N, 7): the first N actions of the reply's chunk

A JSON file holds any of the fields of :class:`ObsMap`; ``"preset": NAME`` starts from a preset and the
other fields override it::

    {"preset": "openpi-libero", "execute": 10}
    {"images": {"image": "agentview"}, "image_size": 256, "state": null, "prompt": "task",
     "action_dims": [0, 1, 2, 3, 4, 5, 6], "gripper": "unit_open"}

Presets (:data:`PRESETS`): ``actdistill`` (the default: our own keys and image size, what ``actdistill
serve`` expects) and ``openpi-libero`` (the keys of openpi's ``examples/libero/main.py``: images
``observation/image`` and ``observation/wrist_image`` resized with zero padding to 224x224, the 8-D state
``observation/state`` = eef position, axis-angle, gripper fingers, i.e. our ``proprio``; ``prompt``; the
first 7 action dims, LIBERO's gripper sign; 5 actions executed per chunk, openpi's ``replan_steps``). Our
cameras are already upright, which is what openpi's LIBERO client makes of LIBERO's raw frames (it rotates
them by 180 degrees), so no rotation is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks.base import ACTION_DIM, IMAGE_KEYS, PROPRIO_DIM
from tasks.errors import MissingInputError, UserInputError

# gripper convention of the server's actions -> ours (-1 = open, +1 = close)
GRIPPER = {
    "signed_close": lambda g: g,  # ours and LIBERO's: -1 open, +1 close
    "signed_open": lambda g: -g,  # +1 open, -1 close
    "unit_close": lambda g: 2.0 * g - 1.0,  # [0, 1], 1 = close
    "unit_open": lambda g: 1.0 - 2.0 * g,  # [0, 1], 1 = open (Bridge / Octo WidowX)
}


@dataclass(frozen=True)
class ObsMap:
    """The mapping, field by field (JSON names are the field names).

    ``images``: request key -> our camera (``agentview`` or ``wrist``); ``image_size``: ``(H, W)`` to resize
    each image to, keeping its aspect ratio and padding with zeros (openpi's ``resize_with_pad``), or
    ``None`` to send it as is; ``state``: request key of ``proprio`` (8,) float32, or ``None``; ``state_dims``:
    the proprio entries sent (default all 8); ``prompt``: request key of the instruction string, or ``None``;
    ``actions``: reply key of the chunk ``(K, D)`` (``(D,)`` counts as a chunk of one); ``action_dims``: the 7
    of the D dims that make our action, in our order (default: the reply's dims as they are, which must then be
    7); ``gripper``: the convention of the server's gripper dim (:data:`GRIPPER`); ``execute``: how many
    actions of each chunk run open loop before the next request (default: the whole chunk); ``timeout_s``:
    how long to wait for a reply before the server counts as gone.
    """

    images: Mapping[str, str] = field(default_factory=lambda: {cam: cam for cam in IMAGE_KEYS})
    image_size: tuple[int, int] | None = None
    state: str | None = "proprio"
    state_dims: tuple[int, ...] | None = None
    prompt: str | None = "instruction"
    actions: str = "actions"
    action_dims: tuple[int, ...] | None = None
    gripper: str = "signed_close"
    execute: int | None = None
    timeout_s: float = 300.0

    def __post_init__(self):
        bad = {key: cam for key, cam in dict(self.images).items() if cam not in IMAGE_KEYS}
        if bad:
            raise UserInputError(f"obs map images {bad} name unknown cameras; valid cameras: {', '.join(IMAGE_KEYS)}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise UserInputError(f"obs map image_size must be a size N or [H, W] >= 1, got {list(self.image_size)}")
        if self.state_dims is not None and not all(0 <= d < PROPRIO_DIM for d in self.state_dims):
            raise UserInputError(f"obs map state_dims {list(self.state_dims)} must index proprio's {PROPRIO_DIM} "
                                 f"entries (0-{PROPRIO_DIM - 1})")
        if self.action_dims is not None and (len(self.action_dims) != ACTION_DIM or min(self.action_dims) < 0):
            raise UserInputError(f"obs map action_dims must be {ACTION_DIM} indices >= 0 into the server's action, "
                                 f"got {list(self.action_dims)}")
        if self.gripper not in GRIPPER:
            raise UserInputError(f"obs map gripper {self.gripper!r} is unknown; valid conventions: {', '.join(GRIPPER)}")
        if self.execute is not None and self.execute < 1:
            raise UserInputError(f"obs map execute must be >= 1 (or null for the whole chunk), got {self.execute}")
        if not self.timeout_s > 0:
            raise UserInputError(f"obs map timeout_s must be > 0, got {self.timeout_s}")
        keys = [*self.images, *(k for k in (self.state, self.prompt) if k is not None)]
        if len(set(keys)) != len(keys):
            raise UserInputError(f"obs map request keys {keys} repeat a key; each entry needs its own")

    def to_request(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """The server's request for our observation ``obs`` (images (H, W, 3) uint8 as mapped and resized,
        state float32, prompt str)."""
        out: dict[str, Any] = {}
        for key, cam in self.images.items():
            image = np.ascontiguousarray(obs[cam], dtype=np.uint8)  # (H, W, 3)
            out[key] = image if self.image_size is None else resize_with_pad(image, *self.image_size)
        if self.state is not None:
            proprio = np.asarray(obs["proprio"], dtype=np.float32)  # (8,)
            out[self.state] = proprio if self.state_dims is None else proprio[list(self.state_dims)]
        if self.prompt is not None:
            out[self.prompt] = str(obs["instruction"])
        return out

    def to_actions(self, reply: Mapping[str, Any]) -> np.ndarray:
        """Our actions ``(N, 7)`` from a server's reply: its chunk's selected dims, our gripper sign, the first
        ``execute`` steps. Raises ``ValueError`` naming the reply's keys or the chunk's shape when they do not fit
        (non-finite values pass through: the rollout records them as a failed episode)."""
        if not isinstance(reply, Mapping) or self.actions not in reply:
            keys = sorted(map(str, reply)) if isinstance(reply, Mapping) else type(reply).__name__
            raise ValueError(f"policy server's reply has no {self.actions!r} entry (it has {keys})")
        raw = np.asarray(reply[self.actions])
        if raw.dtype.kind not in "fiub":
            raise ValueError(f"policy server's actions have dtype {raw.dtype}; expected numbers")
        chunk = raw[None] if raw.ndim == 1 else raw  # (K, D)
        if chunk.ndim != 2 or len(chunk) == 0:
            raise ValueError(f"policy server returned actions of shape {raw.shape}; expected a chunk (K, D) or (D,)")
        if self.action_dims is not None:
            if chunk.shape[1] <= max(self.action_dims):
                raise ValueError(f"policy server returned actions of shape {raw.shape}; the obs map takes dims "
                                 f"{list(self.action_dims)}")
            chunk = chunk[:, list(self.action_dims)]
        if chunk.shape[1] != ACTION_DIM:
            raise ValueError(f"policy server returned actions of shape {raw.shape}: {chunk.shape[1]} dims per step, "
                             f"expected {ACTION_DIM} (choose them with the obs map's action_dims)")
        chunk = np.array(chunk[: self.execute])  # (N, 7), a copy
        if self.gripper != "signed_close":
            chunk = chunk.astype(np.float64)
            chunk[:, 6] = GRIPPER[self.gripper](chunk[:, 6])
        return chunk

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values (what a file holds; hashed with a served policy's identity)."""
        out = asdict(self)
        out["images"] = dict(self.images)
        for key in ("image_size", "state_dims", "action_dims"):
            out[key] = None if out[key] is None else list(out[key])
        return out


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 resized to fit (height, width) bilinearly, keeping its aspect ratio, centred
    on zeros: (height, width, 3) uint8. The algorithm of openpi's ``image_tools.resize_with_pad`` (PIL)."""
    from PIL import Image  # pillow comes with matplotlib and imageio

    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    ratio = max(w / width, h / height)
    new_h, new_w = int(h / ratio), int(w / ratio)
    resized = Image.fromarray(image).resize((new_w, new_h), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (max(0, (width - new_w) // 2), max(0, (height - new_h) // 2)))
    return np.asarray(canvas)


PRESETS: dict[str, ObsMap] = {
    "actdistill": ObsMap(),
    "openpi-libero": ObsMap(
        images={"observation/image": "agentview", "observation/wrist_image": "wrist"},
        image_size=(224, 224), state="observation/state", prompt="prompt",
        action_dims=tuple(range(ACTION_DIM)), gripper="signed_close", execute=5,
    ),
}
DEFAULT = "actdistill"


def _from_json(data: Mapping[str, Any], source: str) -> ObsMap:
    """An :class:`ObsMap` from a JSON object (see the module docstring); errors name ``source``."""
    if not isinstance(data, Mapping):
        raise UserInputError(f"obs map {source} must hold a JSON object, got {type(data).__name__}")
    data = dict(data)
    base = data.pop("preset", DEFAULT)
    if base not in PRESETS:
        raise UserInputError(f"obs map {source}: unknown preset {base!r}; valid presets: {', '.join(PRESETS)}")
    names = {f.name for f in fields(ObsMap)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserInputError(f"obs map {source}: unknown field(s) {unknown}; valid fields: preset, {', '.join(sorted(names))}")
    if "images" in data and not isinstance(data["images"], Mapping):
        raise UserInputError(f"obs map {source}: images must map request keys to cameras, got {data['images']!r}")
    try:
        if isinstance(data.get("image_size"), int):
            data["image_size"] = (data["image_size"], data["image_size"])
        for key in ("image_size", "state_dims", "action_dims"):
            if data.get(key) is not None:
                data[key] = tuple(int(v) for v in data[key])
        return replace(PRESETS[base], **data)
    except UserInputError:
        raise
    except (TypeError, ValueError) as exc:  # a value of the wrong type, e.g. "execute": "five"
        raise UserInputError(f"obs map {source}: {exc}") from exc


def load_obs_map(spec: str | None) -> ObsMap:
    """The obs map named by ``spec``: a preset name (:data:`PRESETS`), a JSON file, or ``None`` (the default
    preset). Raises :class:`~tasks.errors.MissingInputError` for a file that does not exist and
    :class:`~tasks.errors.UserInputError` for bad contents, naming the field and the valid choices."""
    if spec is None:
        return PRESETS[DEFAULT]
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise MissingInputError(f"--obs-map {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"obs map {path} is not valid JSON: {exc}") from exc
    return _from_json(data, str(path))
