"""VLA checkpoints (a folder: ``model.safetensors`` + ``config.json``) and the policy that runs them.

    from distill import load_policy
    policy = load_policy("runs/teacher_small")       # or load_policy(path, device="cuda")
    policy.reset()
    action = policy.act(obs)                          # (7,) in [-1, 1]; re-queries the model every K steps
    policy.last_info                                  # {"executed_layers": [...], "model_ms": ...}

``config.json`` holds ``vla`` (the :class:`distill.vla.VLAConfig`: architecture, tokenizer vocabulary,
action/proprio normalisation statistics), ``kind`` (the registry name of its loader, :data:`POLICY_KINDS`:
``"vla"`` for a plain VLA such as a teacher, ``"routed_student"``, and ``"hf_vla"`` / ``"hf_routed_student"``
for a real VLM backbone, :mod:`distill.hf_vla`, whose ``vla`` is an :class:`distill.hf_vla.HFVLAConfig` and whose
folder also holds ``tokenizer/``) and free metadata (training settings, suites and data dirs, package versions,
code commit). The stored name never names a module, so code can move
without breaking stored checkpoints; :func:`load_policy` opens every kind.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distill.flops import forward_flops, seq_len
from distill.vla import VLA, VLAConfig, postprocess_actions
from tasks.errors import MissingInputError, UserInputError
from tasks.provenance import code_version, file_hash, package_versions

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "actdistill-vla"
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Checkpoint kind (the ``kind`` field of config.json) -> its loader, ``function(path, device=, dtype=)``,
# imported only when a checkpoint of that kind is opened.
POLICY_KINDS = {
    "vla": "distill.checkpoint:load_vla_policy",
    "routed_student": "distill.routed:load_student_policy",
    "hf_vla": "distill.hf_vla:load_hf_policy",  # a real VLM backbone (distill.hf_vla.HFVLA) with an action head
    "hf_routed_student": "distill.hf_vla:load_hf_student_policy",
}
# The unrouted kinds, which can be a teacher (distill, fine-tuning): kind -> ``function(path, device=)`` returning
# ``(model, config.json)``.
TEACHER_KINDS = {"vla": "distill.checkpoint:load_vla", "hf_vla": "distill.hf_vla:load_hf_vla"}
DEFAULT_KIND = "vla"  # checkpoints without a kind field are plain VLAs
LEGACY_KINDS = {"student": "routed_student"}  # kind values written before the registry
LEGACY_LOADERS = {"distill.student:load_student_policy": "routed_student"}  # the old "policy_loader" field


def check_device(device: str | torch.device) -> None:
    """Raise ``ValueError`` naming ``device`` when it asks for CUDA on a machine without it."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"device {str(device)!r} requested but CUDA is not available; valid here: cpu")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` (or a torch dtype) -> torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise UserInputError(f"unknown dtype {name!r}; valid: {', '.join(_DTYPES)}")
    return _DTYPES[name]


def checkpoint_versions() -> dict:
    """Versions of python and the packages that change a checkpoint's numbers."""
    return package_versions(("torch", "transformers", "safetensors", "numpy"))


def save_checkpoint(
    path: str | Path, model: VLA, meta: Mapping | None = None, dtype: torch.dtype = torch.float32
) -> Path:
    """Write ``model`` to the folder ``path`` (created) as ``model.safetensors`` + ``config.json``.

    ``meta`` is merged into ``config.json`` (keys ``format``/``vla``/``versions``/``code`` are reserved).
    ``dtype`` is the storage dtype of floating tensors (float16 halves the file; loading is always
    float32). Files are written to temporaries and renamed, so a crash never leaves a half-written file.
    """
    reserved = {"format", "format_version", "vla", "versions", "code"}
    clash = sorted(reserved & set(meta or {}))
    if clash:
        raise ValueError(f"meta keys {clash} are reserved; reserved keys: {sorted(reserved)}")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": getattr(model, "CHECKPOINT_KIND", DEFAULT_KIND),  # hf_vla for distill.hf_vla.HFVLA
        "vla": model.config.to_dict(),
        **dict(meta or {}),
        "versions": checkpoint_versions(),
        "code": code_version(),
    }
    written = _write_checkpoint(path, model.state_dict(), config, dtype)
    side_files = getattr(model, "save_side_files", None)  # an HF VLA's tokenizer files
    if side_files is not None:
        side_files(written)
    return written


def _write_checkpoint(path: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping,
                      dtype: torch.dtype) -> Path:
    """Write ``tensors`` (floating ones cast to ``dtype``) and ``config`` into the folder ``path``, each file
    through a temporary and a rename."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    stored = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path / (WEIGHTS + ".tmp")
    save_file(stored, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, path / WEIGHTS)
    tmp = path / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path / CONFIG)
    return path


SIDE_FILES = ("loss.png", "train_log.json", "history.json", "README.md")  # copied along by convert_checkpoint
SIDE_DIRS = ("tokenizer",)  # likewise (an HF VLA's tokenizer files)


def convert_checkpoint(src: str | Path, dst: str | Path, dtype: str | torch.dtype = "float16",
                       overwrite: bool = False) -> dict:
    """Copy the checkpoint folder ``src`` (teacher or student) to ``dst`` with its floating tensors stored as
    ``dtype`` (float16 halves the file; loading is always float32). config.json is kept, with ``storage`` saying
    what was done; the loss plot and training logs come along. Returns ``{"src_bytes", "dst_bytes", "dtype"}``.
    Refuses to replace a checkpoint in ``dst`` unless ``overwrite``, and to write onto ``src`` itself."""
    target = parse_dtype(dtype)
    name = next(k for k, v in _DTYPES.items() if v == target)
    src, dst = Path(src), Path(dst)
    config = read_config(src)
    if config.get("format") != FORMAT:
        raise UserInputError(f"{src / CONFIG} is not an {FORMAT} checkpoint config (format={config.get('format')!r})")
    if dst.resolve() == src.resolve():
        raise UserInputError(f"--out {str(dst)!r} is the source checkpoint itself; give another folder")
    if (dst / WEIGHTS).exists() and not overwrite:
        raise UserInputError(f"{str(dst)!r} already holds a checkpoint; pass overwrite (--overwrite) to replace it")
    tensors = load_weights(src)  # float32: exact for any stored float16/bfloat16, so converting back loses nothing
    _write_checkpoint(dst, tensors, {**config, "storage": f"{name} copy of {src}'s weights (loads as float32)"},
                      target)
    for side in SIDE_FILES:
        if (src / side).is_file():
            shutil.copyfile(src / side, dst / side)
    for side in SIDE_DIRS:
        if (src / side).is_dir():
            shutil.copytree(src / side, dst / side, dirs_exist_ok=True)
    return {"src_bytes": (src / WEIGHTS).stat().st_size, "dst_bytes": (dst / WEIGHTS).stat().st_size, "dtype": name}


def read_config(path: str | Path) -> dict:
    """The parsed ``config.json`` of the checkpoint folder ``path``; clear errors when it is missing."""
    path = Path(path)
    if not path.is_dir():
        raise MissingInputError(f"checkpoint folder {str(path)!r} does not exist")
    file = path / CONFIG
    if not file.is_file():
        raise MissingInputError(f"checkpoint {str(path)!r} has no {CONFIG} (expected {file})")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{file} is not valid JSON: {exc}") from exc


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of ``path/model.safetensors`` as float32 (integers unchanged); names the file on error."""
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise MissingInputError(f"checkpoint {str(path)!r} has no {WEIGHTS} (expected {file})")
    try:
        tensors = load_file(str(file))
    except SafetensorError as exc:
        raise UserInputError(f"{file} is corrupt or truncated ({exc})") from exc
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def check_state_dict(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``ValueError`` naming missing, unexpected or wrongly shaped ``tensors`` for ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    for name, shape in expected.items():
        if name not in tensors:
            problems.append(f"missing tensor {name!r} (config expects shape {shape})")
        elif tuple(tensors[name].shape) != shape:
            problems.append(
                f"tensor {name!r}: checkpoint shape {tuple(tensors[name].shape)}, config expects {shape}"
            )
    problems += [
        f"unexpected tensor {name!r} (shape {tuple(tensors[name].shape)}) not in the config's model"
        for name in tensors
        if name not in expected
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems) - 5} more)" if len(problems) > 5 else "")
        raise UserInputError(f"weights in {source} do not fit its config.json: {shown}")


def load_vla(path: str | Path, device: str | torch.device = "cpu") -> tuple[VLA, dict]:
    """The :class:`VLA` in the folder ``path`` (float32, eval mode, on ``device``) and its config.json."""
    config = read_config(path)
    if config.get("format") != FORMAT or "vla" not in config:
        raise UserInputError(
            f"{Path(path) / CONFIG} is not an {FORMAT} checkpoint config "
            f"(format={config.get('format')!r}, keys {sorted(config)})"
        )
    model = VLA(VLAConfig.from_dict(config["vla"]))
    tensors = load_weights(path)
    check_state_dict(model, tensors, str(Path(path) / WEIGHTS))
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def load_teacher(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The unrouted model in the checkpoint folder ``path`` (float32, eval, on ``device``) and its config.json: a
    :class:`VLA` (kind ``vla``) or a :class:`distill.hf_vla.HFVLA` (kind ``hf_vla``). Raises ``UserInputError``
    naming the kind of any other checkpoint (a routed student is no teacher) and the valid ones."""
    kind = checkpoint_kind(read_config(path), Path(path) / CONFIG)
    if kind not in TEACHER_KINDS:
        raise UserInputError(f"{Path(path) / CONFIG} is a {kind!r} checkpoint, not a teacher; teacher kinds: "
                             f"{', '.join(TEACHER_KINDS)}")
    module_name, _, func_name = TEACHER_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), func_name)(path, device=device)


class VLAPolicy:
    """Runs a VLA as a policy: predicts a K-step chunk, executes it open-loop, re-queries when it is used up.

    Follows the policy protocol of :mod:`harness.rollout`. Attributes: ``model`` (the VLA),
    ``checkpoint_hash`` (sha256 of model.safetensors, 16 hex digits) and ``last_info``, a new dict after
    every model call (left in place while queued actions are served)::

        {"executed_layers": [0, 1, ...],   # layer indices run by the last model call
         "layer_mask": [1.0, ...],          # the same as an (L,) 0/1 vector: its mean is the per-layer rate
         "executed_fraction": 1.0,          # fraction of the L layers that ran
         "flops": 3.9e8,                    # analytic FLOPs of the call for one row (distill.flops)
         "model_ms": 4.2}                   # wall time of the model call (device synchronised)

    Routed students subclass it and override :meth:`model_call`. ``execute`` (:meth:`set_execute`): how many
    actions of each K-step chunk run open loop before the next model call (default: all K); compute per
    environment step is the call's divided by it.
    """

    def __init__(self, model: VLA, checkpoint_hash: str = "", path: str | None = None):
        self.model = model.eval()
        if hasattr(model, "fast_inference"):  # the reference VLA: frozen vision encoder on the CPU (VLA.fast_inference)
            model.fast_inference()
        self.checkpoint_hash = checkpoint_hash
        self.path = path
        self.last_info: dict = {}
        self.execute: int | None = None
        self._queue: deque[np.ndarray] = deque()

    def set_execute(self, k: int | None) -> None:
        """Execute the first ``k`` actions of each chunk (1 <= k <= the chunk length K; None: all K)."""
        chunk = int(self.model.config.chunk)
        if k is not None and not 1 <= int(k) <= chunk:
            raise UserInputError(f"--execute {k} must be between 1 and the policy's chunk length {chunk}")
        self.execute = None if k is None else int(k)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def needs_obs_next(self) -> bool:
        """True when the next ``act`` calls the model (and so needs the camera images)."""
        return not self._queue

    def reset(self) -> None:
        """Forget the queued actions (call at the start of every episode)."""
        self._queue.clear()
        self.last_info = {}

    def model_call(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[list[int]]]:
        """Normalised chunk (B, K, 7) for a prepared batch and, per row, the decoder layers executed."""
        with torch.inference_mode():
            chunk = self.model(batch)  # (B, K, 7)
        return chunk, [list(range(self.model.num_layers))] * chunk.shape[0]

    def predict(self, obs_list: Sequence[Mapping]) -> np.ndarray:
        """Action chunks (B, K, 7) for a list of observations: de-normalised, clipped, gripper binarised.

        Sets ``last_info`` for the first row (``model_ms`` covers the whole batch).
        """
        batch = self.model.prepare(obs_list)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        chunk, executed = self.model_call(batch)
        sync()
        model_ms = (time.perf_counter() - start) * 1e3
        with torch.inference_mode():
            raw = self.model.unnormalize_actions(chunk.float()).cpu().numpy()  # (B, K, 7)
        num_layers = self.model.num_layers
        ran = np.zeros(num_layers)
        ran[executed[0]] = 1.0
        self.last_info = {
            "executed_layers": list(executed[0]),
            "layer_mask": ran.tolist(),
            "executed_fraction": len(executed[0]) / num_layers,
            "flops": forward_flops(self.model, 1, seq_len(self.model, batch), executed[0])["total"],
            "model_ms": model_ms,
        }
        return postprocess_actions(raw)

    def act(self, obs: Mapping) -> np.ndarray:
        """Next action (7,) in [-1, 1]; calls the model only when the queued chunk is used up."""
        if not self._queue:
            self._queue.extend(self.predict([obs])[0][:self.execute])
        return self._queue.popleft()


def checkpoint_kind(config: Mapping, source: str | Path = CONFIG) -> str:
    """The registry name (a key of :data:`POLICY_KINDS`) of the checkpoint whose config.json is ``config``.

    Older checkpoints load through their aliases: ``kind: "student"`` and the ``policy_loader`` module path.
    Raises ``ValueError`` naming ``source`` and the valid kinds for anything else.
    """
    loader = config.get("policy_loader")
    if loader is not None and loader not in LEGACY_LOADERS:
        raise UserInputError(f"policy_loader {loader!r} in {source} is not a known loader; checkpoints name their "
                         f"loader by kind, one of: {', '.join(POLICY_KINDS)}")
    kind = config.get("kind") or LEGACY_LOADERS.get(loader) or DEFAULT_KIND
    kind = LEGACY_KINDS.get(kind, kind)
    if kind not in POLICY_KINDS:
        raise UserInputError(f"unknown checkpoint kind {kind!r} in {source}; valid kinds: {', '.join(POLICY_KINDS)}")
    return kind


def load_policy(
    path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
) -> VLAPolicy:
    """The policy stored in the checkpoint folder ``path``, on ``device`` with parameters in ``dtype``, opened by
    the loader its ``kind`` names (:data:`POLICY_KINDS`).

    Raises ``FileNotFoundError`` naming a missing folder or file and ``ValueError`` naming an unknown kind, a
    corrupt file or a tensor whose shape does not fit the config.
    """
    kind = checkpoint_kind(read_config(path), Path(path) / CONFIG)
    module_name, _, func_name = POLICY_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), func_name)(path, device=device, dtype=dtype)


def load_vla_policy(
    path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
) -> VLAPolicy:
    """:class:`VLAPolicy` over the plain VLA (e.g. a teacher) in the checkpoint folder ``path``."""
    model, _ = load_vla(path, device)
    model = model.to(parse_dtype(dtype))
    return VLAPolicy(model, checkpoint_hash=file_hash(Path(path) / WEIGHTS), path=str(path))
