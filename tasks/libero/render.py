"""Camera rendering for LIBERO scenes, decoupled from robosuite's step.

robosuite renders every camera inside ``step`` when camera observations are on. The LIBERO
environment here is built with camera observations off, and :class:`SceneRenderer` draws the
cameras itself with one ``mujoco.Renderer`` only when an observation is asked for. It renders
from a private copy of the model and its own ``MjData`` (qpos and mocap copied from the physics
state, then forward kinematics), so rendering never perturbs the simulation.

Two modes:

- ``"faithful"``: the model as LIBERO builds it (same meshes, multisampling, reflections,
  shadows), i.e. what robosuite's own offscreen renderer draws.
- ``"fast"``: visual meshes simplified by vertex clustering (done once per source mesh and cached
  under the user's cache dir, keyed by a hash of the mesh data), coarser tessellation of
  built-in shapes, no multisampling, no reflections, no shadows.

Frames come back in robosuite's raw orientation (OpenGL rows, bottom row first), which is what
LIBERO's datasets and the OpenVLA evaluation rotate by 180 degrees to make upright.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import os
import weakref
from pathlib import Path

import mujoco
import numpy as np

from tasks.errors import UserInputError

RENDER_MODES = ("fast", "faithful")

# Meshes with fewer vertices than this are left as they are in fast mode.
_MIN_VERTS_TO_SIMPLIFY = 2000
# Fast mode keeps at most this many vertices per simplified mesh.
_MAX_VERTS_AFTER = 1500
# Texture coordinates are quantised on this grid when clustering, so texture seams survive.
_TEXCOORD_GRID = 32
_DECIMATION_VERSION = 1

# Renderers still open at interpreter exit are closed before the GL backend tears down EGL: the
# hook is registered after the first renderer exists, i.e. after the backend's own hook, so it
# runs first.
_LIVE: weakref.WeakSet = weakref.WeakSet()
_HOOKED = []


def _close_live() -> None:
    for renderer in list(_LIVE):
        renderer.close()


def cache_dir() -> Path:
    """The project's cache directory (``$XDG_CACHE_HOME/actdistill`` or ``~/.cache/actdistill``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "actdistill"


def _mesh_arrays(model: mujoco.MjModel, i: int) -> dict[str, np.ndarray]:
    """Vertex, normal, texcoord and face arrays of mesh ``i`` (face indices local to the mesh)."""
    va, vn = model.mesh_vertadr[i], model.mesh_vertnum[i]
    na, nn = model.mesh_normaladr[i], model.mesh_normalnum[i]
    fa, fn = model.mesh_faceadr[i], model.mesh_facenum[i]
    out = {
        "vert": np.array(model.mesh_vert[va : va + vn]),  # (V, 3)
        "normal": np.array(model.mesh_normal[na : na + nn]),  # (N, 3)
        "face": np.array(model.mesh_face[fa : fa + fn]),  # (F, 3)
        "facenormal": np.array(model.mesh_facenormal[fa : fa + fn]),  # (F, 3)
    }
    ta, tn = model.mesh_texcoordadr[i], model.mesh_texcoordnum[i]
    if ta >= 0 and tn > 0:
        out["texcoord"] = np.array(model.mesh_texcoord[ta : ta + tn])  # (T, 2)
        out["facetexcoord"] = np.array(model.mesh_facetexcoord[fa : fa + fn])  # (F, 3)
    return out


def _cluster(mesh: dict[str, np.ndarray], cells: int) -> dict[str, np.ndarray]:
    """One pass of vertex clustering on a ``cells``-per-longest-side grid.

    Every face corner is keyed by its grid cell (and quantised texcoord when the mesh is
    textured); corners with one key merge into one vertex at their mean position, normal and
    texcoord. Faces that collapse are dropped, duplicates removed.
    """
    face = mesh["face"]
    corner_pos = mesh["vert"][face].reshape(-1, 3)  # (3F, 3)
    corner_nrm = mesh["normal"][mesh["facenormal"]].reshape(-1, 3)  # (3F, 3)
    lo = corner_pos.min(axis=0)
    size = max(float((corner_pos.max(axis=0) - lo).max()), 1e-9) / cells
    keys = [np.floor((corner_pos - lo) / size).astype(np.int64)]  # (3F, 3)
    textured = "texcoord" in mesh
    if textured:
        corner_tex = mesh["texcoord"][mesh["facetexcoord"]].reshape(-1, 2)  # (3F, 2)
        keys.append(np.floor(corner_tex * _TEXCOORD_GRID).astype(np.int64))
    _, cluster = np.unique(np.concatenate(keys, axis=1), axis=0, return_inverse=True)
    cluster = cluster.reshape(-1)  # (3F,)
    n = int(cluster.max()) + 1
    count = np.bincount(cluster, minlength=n)[:, None].astype(np.float64)  # (n, 1)

    def mean(values: np.ndarray) -> np.ndarray:
        acc = np.zeros((n, values.shape[1]))
        np.add.at(acc, cluster, values)
        return acc / count

    vert = mean(corner_pos)
    normal = mean(corner_nrm)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    new_face = cluster.reshape(-1, 3)  # (F, 3)
    keep = (
        (new_face[:, 0] != new_face[:, 1])
        & (new_face[:, 1] != new_face[:, 2])
        & (new_face[:, 0] != new_face[:, 2])
    )
    new_face = new_face[keep]
    _, first = np.unique(np.sort(new_face, axis=1), axis=0, return_index=True)
    new_face = new_face[np.sort(first)].astype(np.int32)
    out = {"vert": vert.astype(np.float32), "normal": normal.astype(np.float32), "face": new_face}
    if textured:
        out["texcoord"] = mean(corner_tex).astype(np.float32)
    return out


def simplify_mesh(mesh: dict[str, np.ndarray], max_verts: int = _MAX_VERTS_AFTER) -> dict[str, np.ndarray]:
    """Vertex-clustering simplification of one mesh to at most ``max_verts`` vertices.

    The grid is refined from coarse to fine and the finest one that stays within the budget
    (and within the source's vertex, normal and texcoord counts) wins. Returns ``vert`` (V, 3),
    ``normal`` (V, 3), ``face`` (F, 3) and, for textured meshes, ``texcoord`` (V, 2); normals and
    texcoords are indexed like vertices.
    """
    limit = min(max_verts, len(mesh["vert"]), len(mesh["normal"]), len(mesh.get("texcoord", mesh["vert"])))
    best = None
    for cells in (8, 12, 16, 24, 32, 48, 64):
        candidate = _cluster(mesh, cells)
        if len(candidate["vert"]) > limit or len(candidate["face"]) == 0:
            break
        best = candidate
    return best if best is not None else {}


def _mesh_key(mesh: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(f"v{_DECIMATION_VERSION}-{_MAX_VERTS_AFTER}-{_TEXCOORD_GRID}".encode())
    for name in sorted(mesh):
        h.update(name.encode())
        h.update(np.ascontiguousarray(mesh[name]).tobytes())
    return h.hexdigest()[:32]


def _cached_simplify(mesh: dict[str, np.ndarray], folder: Path) -> dict[str, np.ndarray]:
    path = folder / f"{_mesh_key(mesh)}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {k: stored[k] for k in stored.files}
    simple = simplify_mesh(mesh)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **simple)
    os.replace(tmp, path)
    return simple


def _write_mesh(model: mujoco.MjModel, i: int, simple: dict[str, np.ndarray]) -> None:
    """Overwrite mesh ``i`` of ``model`` in place with a smaller one (render-only model)."""
    nv, nf = len(simple["vert"]), len(simple["face"])
    va, na, fa = model.mesh_vertadr[i], model.mesh_normaladr[i], model.mesh_faceadr[i]
    model.mesh_vert[va : va + nv] = simple["vert"]
    model.mesh_normal[na : na + nv] = simple["normal"]
    model.mesh_face[fa : fa + nf] = simple["face"]
    model.mesh_facenormal[fa : fa + nf] = simple["face"]
    model.mesh_vertnum[i] = nv
    model.mesh_normalnum[i] = nv
    model.mesh_facenum[i] = nf
    if "texcoord" in simple:
        ta = model.mesh_texcoordadr[i]
        model.mesh_texcoord[ta : ta + nv] = simple["texcoord"]
        model.mesh_facetexcoord[fa : fa + nf] = simple["face"]
        model.mesh_texcoordnum[i] = nv


def fast_render_model(model: mujoco.MjModel, folder: Path | None = None) -> mujoco.MjModel:
    """A render-only copy of ``model`` with simplified visual meshes, no MSAA, reflections or shadows.

    Only meshes used by visual geoms (contype = conaffinity = 0) are simplified, so the copy's
    collision data stay those of the source. Simplified meshes are cached in ``folder``
    (default ``cache_dir() / "libero_meshes"``).
    """
    folder = folder if folder is not None else cache_dir() / "libero_meshes"
    fast = copy.copy(model)
    visual = (
        (model.geom_type == mujoco.mjtGeom.mjGEOM_MESH)
        & (model.geom_contype == 0)
        & (model.geom_conaffinity == 0)
    )
    collision = (model.geom_type == mujoco.mjtGeom.mjGEOM_MESH) & ~visual
    visual_meshes = set(model.geom_dataid[visual].tolist()) - set(model.geom_dataid[collision].tolist())
    for i in sorted(visual_meshes):
        if model.mesh_vertnum[i] < _MIN_VERTS_TO_SIMPLIFY:
            continue
        simple = _cached_simplify(_mesh_arrays(model, i), folder)
        if simple:
            _write_mesh(fast, i, simple)
    fast.vis.quality.offsamples = 0
    fast.vis.quality.numslices = 12  # tessellation of built-in shapes (LIBERO: 28)
    fast.vis.quality.numstacks = 6  # (LIBERO: 16)
    fast.vis.quality.numquads = 1  # (LIBERO: 4)
    fast.mat_reflectance[:] = 0.0
    fast.light_castshadow[:] = 0
    return fast


class SceneRenderer:
    """Renders named cameras of a robosuite simulation on demand with one ``mujoco.Renderer``.

    ``render(model, data, cameras)`` copies the kinematic state (qpos, mocap) of the physics state
    into a private ``MjData``, runs forward kinematics and returns one raw frame per camera,
    (H, W, 3) uint8 in robosuite's orientation (bottom row first).
    """

    def __init__(self, model: mujoco.MjModel, mode: str, height: int, width: int) -> None:
        if mode not in RENDER_MODES:
            raise UserInputError(f"unknown render mode {mode!r}; valid modes: {', '.join(RENDER_MODES)}")
        self.mode = mode
        self.model = fast_render_model(model) if mode == "fast" else copy.copy(model)
        self.model.vis.global_.offwidth = max(int(self.model.vis.global_.offwidth), width)
        self.model.vis.global_.offheight = max(int(self.model.vis.global_.offheight), height)
        self.data = mujoco.MjData(self.model)
        self.renderer: mujoco.Renderer | None = mujoco.Renderer(self.model, height, width)
        if not _HOOKED:
            atexit.register(_close_live)
            _HOOKED.append(True)
        _LIVE.add(self)

    def sync(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        """Copy the kinematic state of ``model``/``data`` (the physics pair this renderer was built
        from) and run forward kinematics. Body poses and geom colours are copied too: LIBERO
        places fixtures by writing ``body_pos`` and shows some object states through colours."""
        self.model.body_pos[:] = model.body_pos
        self.model.body_quat[:] = model.body_quat
        self.model.geom_rgba[:] = model.geom_rgba
        self.data.qpos[:] = data.qpos
        self.data.mocap_pos[:] = data.mocap_pos
        self.data.mocap_quat[:] = data.mocap_quat
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)

    def render(
        self, model: mujoco.MjModel, data: mujoco.MjData, cameras: tuple[str, ...]
    ) -> list[np.ndarray]:
        """Raw frames of ``cameras`` for the physics state ``model``/``data``: each (H, W, 3) uint8,
        bottom row first."""
        self.sync(model, data)
        frames = []
        for camera in cameras:
            self.renderer.update_scene(self.data, camera=camera)
            if self.mode == "fast":
                self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            frames.append(self.renderer.render()[::-1])  # (H, W, 3), mujoco.Renderer is top row first
        return frames

    def close(self) -> None:
        """Free the GL context (idempotent)."""
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
