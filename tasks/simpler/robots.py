"""The two embodiments of the SIMPLER-style suites, authored here in MJCF.

Both arms are serial chains of capsule links with joint position servos (gravity compensated),
a hand with two slide fingers and a wrist camera. ``google``: a 7-DoF arm on a pedestal, in the
style of the Google Robot; ``widowx``: a 6-DoF table-mounted arm in the style of the WidowX 250.
The end-effector site ``eef`` sits between the finger tips; the hand's local +z is the approach
direction (fingers point along it), fingers close along its local y.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArmSpec:
    name: str
    base_pos: tuple[float, float, float]
    # (axis, length of the link that follows the joint), from the base upwards in the zero pose
    joints: tuple[tuple[str, float], ...]
    link_radius: float
    color: str
    accent: str
    finger_open: float  # per-finger travel (m)
    finger_force: float
    joint_kp: float
    pos_scale: float  # metres per unit action
    rot_scale: float  # radians per unit action
    home_eef: tuple[float, float, float]
    pedestal: bool = False
    workspace_low: tuple[float, float, float] = (-0.35, -0.45, 0.005)
    workspace_high: tuple[float, float, float] = (0.35, 0.45, 0.5)
    extra: dict = field(default_factory=dict)


GOOGLE = ArmSpec(
    name="google",
    base_pos=(-0.52, 0.0, 0.26),
    joints=(("0 0 1", 0.10), ("0 1 0", 0.38), ("0 0 1", 0.0), ("0 1 0", 0.36), ("0 0 1", 0.0),
            ("0 1 0", 0.08), ("0 0 1", 0.0)),
    link_radius=0.04,
    color="0.92 0.92 0.9 1",
    accent="0.15 0.15 0.17 1",
    finger_open=0.045,
    finger_force=60.0,
    joint_kp=1500.0,
    pos_scale=0.03,
    rot_scale=0.15,
    home_eef=(-0.12, 0.0, 0.28),
    pedestal=True,
)

WIDOWX = ArmSpec(
    name="widowx",
    base_pos=(-0.36, 0.0, 0.0),
    joints=(("0 0 1", 0.11), ("0 1 0", 0.27), ("0 1 0", 0.0), ("0 0 1", 0.26), ("0 1 0", 0.06),
            ("0 0 1", 0.0)),
    link_radius=0.025,
    color="0.12 0.12 0.13 1",
    accent="0.45 0.45 0.48 1",
    finger_open=0.035,
    finger_force=30.0,
    joint_kp=600.0,
    pos_scale=0.03,
    rot_scale=0.15,
    home_eef=(-0.08, 0.0, 0.22),
    workspace_low=(-0.3, -0.3, 0.005),
    workspace_high=(0.25, 0.3, 0.4),
)

ARMS = {"google": GOOGLE, "widowx": WIDOWX}


def arm_xml(spec: ArmSpec) -> tuple[str, str]:
    """Return (worldbody XML, actuator XML) of the arm. Joints are ``j0..j{n-1}``, fingers
    ``finger_l``/``finger_r``; the hand carries the ``eef`` site and the ``wrist`` camera."""
    r = spec.link_radius
    parts: list[str] = []
    closes: list[str] = []
    bx, by, bz = spec.base_pos
    if spec.pedestal:
        parts.append(f'<body name="pedestal" pos="{bx} {by} 0"><geom type="cylinder" size="0.09 {(bz + 0.75) / 2}" '
                     f'pos="0 0 {(bz - 0.75) / 2}" rgba="{spec.accent}" contype="0" conaffinity="0"/></body>')
    parts.append(f'<body name="arm_base" pos="{bx} {by} {bz}" gravcomp="1">'
                 f'<geom type="cylinder" size="{r * 1.6} 0.02" rgba="{spec.accent}" contype="0" conaffinity="0"/>')
    closes.append("</body>")
    offset = 0.02
    for i, (axis, length) in enumerate(spec.joints):
        parts.append(f'<body name="link{i}" pos="0 0 {offset:.4f}" gravcomp="1">')
        parts.append(f'<joint name="j{i}" axis="{axis}" range="-3.05 3.05" damping="2" armature="0.05"/>')
        parts.append(f'<inertial pos="0 0 {length / 2:.4f}" mass="{0.6 if spec.name == "google" else 0.25}" '
                     f'diaginertia="0.004 0.004 0.002"/>')
        rgba = spec.color if i % 2 == 0 else spec.accent
        if length > 0:
            parts.append(f'<geom type="capsule" fromto="0 0 0 0 0 {length:.4f}" size="{r:.4f}" rgba="{rgba}" '
                         f'contype="0" conaffinity="0"/>')
        else:
            parts.append(f'<geom type="sphere" size="{r * 1.05:.4f}" rgba="{rgba}" contype="0" conaffinity="0"/>')
        closes.append("</body>")
        offset = length
    fo = spec.finger_open
    hand_len = 0.05
    finger_len = 0.06
    fw = 0.012 if spec.name == "google" else 0.009
    parts.append(f'''
<body name="hand" pos="0 0 {offset:.4f}" gravcomp="1">
  <inertial pos="0 0 0.03" mass="0.3" diaginertia="0.001 0.001 0.001"/>
  <geom name="palm" type="box" size="0.025 {fo + 0.02:.4f} 0.015" pos="0 0 {hand_len - 0.015:.4f}" rgba="{spec.accent}"
        friction="1 0.01 0.001"/>
  <geom type="cylinder" size="{r * 0.9:.4f} {hand_len / 2 - 0.01:.4f}" pos="0 0 {hand_len / 2 - 0.01:.4f}"
        rgba="{spec.color}" contype="0" conaffinity="0"/>
  <camera name="wrist" pos="0.07 0 0.02" xyaxes="0 1 0 0.95 0 0.3" fovy="75"/>
  <body name="finger_l" pos="0 0 {hand_len:.4f}" gravcomp="1">
    <joint name="finger_l" type="slide" axis="0 1 0" range="0 {fo:.4f}" damping="5" armature="0.01"/>
    <inertial pos="0 0 0.03" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
    <geom name="finger_l" type="box" size="0.012 {fw / 2:.4f} {finger_len / 2:.4f}" pos="0 {fw / 2:.4f} {finger_len / 2:.4f}"
          rgba="{spec.color}" friction="1.5 0.02 0.002" condim="4" solref="0.01 1" solimp="0.95 0.99 0.001"/>
  </body>
  <body name="finger_r" pos="0 0 {hand_len:.4f}" gravcomp="1">
    <joint name="finger_r" type="slide" axis="0 -1 0" range="0 {fo:.4f}" damping="5" armature="0.01"/>
    <inertial pos="0 0 0.03" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
    <geom name="finger_r" type="box" size="0.012 {fw / 2:.4f} {finger_len / 2:.4f}" pos="0 {-fw / 2:.4f} {finger_len / 2:.4f}"
          rgba="{spec.color}" friction="1.5 0.02 0.002" condim="4" solref="0.01 1" solimp="0.95 0.99 0.001"/>
  </body>
  <site name="eef" pos="0 0 {hand_len + finger_len - 0.015:.4f}" size="0.005" rgba="1 0 0 0"/>
</body>''')
    body = "\n".join(parts) + "".join(reversed(closes))
    n = len(spec.joints)
    kp = spec.joint_kp
    acts = [f'<position name="a{i}" joint="j{i}" kp="{kp}" kv="{kp / 15:.1f}" ctrlrange="-3.05 3.05"/>'
            for i in range(n)]
    # Fingers: position servos pulled shut with limited force; ctrl is the per-finger opening.
    fkp = spec.finger_force / fo
    for side in ("l", "r"):
        acts.append(f'<position name="a_finger_{side}" joint="finger_{side}" kp="{fkp:.1f}" kv="{fkp / 20:.2f}" '
                    f'ctrlrange="-0.02 {fo:.4f}" forcerange="-{spec.finger_force} {spec.finger_force}"/>')
    return body, "\n".join(acts)
