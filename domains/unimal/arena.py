"""Reading a UNIMAL robot file and placing the robot in its arena (flat terrain, or a terrain task's height field).

The robot files hold the agent only (defaults, the ``torso/0`` body tree, motors, sensors). The arena
built here follows the original assembly: the robot's own defaults with the geom default set to
``condim 3, friction 0.7 0.1 0.1``, parent filtering enabled, timestep 0.005, a ``floor/0`` box of
half-size 100 x 100 x 1 at the origin (top at z = 1) and the torso raised by 1. It leaves out what
costs time or memory and has no effect on the physics: textures and skybox (20x slower compilation),
the original's extra cameras, the sensors (none is observed; they cost up to 8 % of a step) and the
robot's ``<size njmax nconmax>`` (a 52 MiB arena per MjData; ``memory="1M"`` is plenty). The robot's
``<contact><exclude>`` pairs are dropped, as the original drops them. The terrain tasks (``vt``, ``obstacle``) put
one height field named ``floor/0`` where the floor box was (kdistill_unimal.terrain); the rest is the same.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import attrs

from kdistill.errors import DataError, unknown_name
from kdistill_unimal.terrain import TASKS as TERRAINS

MAX_BODIES = 12  # limb slots, torso included
MAX_JOINTS_PER_LIMB = 2
FLOOR_HALF_SIZE = (100.0, 100.0, 1.0)
FLOOR_TOP = FLOOR_HALF_SIZE[2]
FLOOR_OFFSET = 0.2  # gap between the robot's lowest point and the floor in the robot files
TIMESTEP = 0.005
GEOM_CONDIM = 3
GEOM_FRICTION = (0.7, 0.1, 0.1)
# Materials kept for rendering; their colours only. The floor carries a small built-in checker (0.5 m squares) so
# that videos show the robot moving; it is 64 x 64 pixels and costs no measurable compile time.
MATERIALS = {"self": ".7 .5 .3 1", "floor": ".25 .3 .35 1"}
FLOOR_TEXTURE = {"name": "floor", "type": "2d", "builtin": "checker", "rgb1": ".25 .3 .35", "rgb2": ".32 .37 .42",
                 "width": "64", "height": "64"}

_LIMB_NAME = re.compile(r"^limb/(\d+)$")
_JOINT_NAME = re.compile(r"^limb([xy])/(\d+)$")


@attrs.frozen
class RobotXml:
    """A validated robot file, merged into the arena."""

    name: str
    arena_xml: str  # the complete MJCF of arena + robot
    torso_z: float  # torso height in the arena (file z + floor top)
    orig_height: float  # torso_z - floor top - FLOOR_OFFSET, the reference of the fall threshold
    num_limbs: int  # limb bodies, torso excluded
    dof: int
    task: str = "ft"  # the arena: "ft" (flat floor) or a terrain task of kdistill_unimal.terrain


def _fmt(values) -> str:
    return " ".join(repr(float(v)) for v in values)


def _floats(text: str | None, what: str, path: Path) -> list[float]:
    try:
        return [float(v) for v in (text or "").split()]
    except ValueError:
        raise DataError(f"{path}: {what} {text!r} is not a list of numbers; the robot file is damaged.") from None


def _not_unimal(path: Path, why: str) -> DataError:
    return DataError(f"{path} is not a UNIMAL robot file: {why}. Re-install the robots with `kdistill data fetch unimal`.")


def _check_tree(torso: ET.Element, path: Path) -> tuple[int, int]:
    """Check the body tree; returns (limb bodies, hinge joints)."""
    bodies = list(torso.iter("body"))
    if len(bodies) < 2:
        raise _not_unimal(path, "the torso/0 body has no limbs")
    if len(bodies) > MAX_BODIES:
        raise DataError(f"{path} has {len(bodies)} bodies; UNIMAL robots have at most {MAX_BODIES} (torso + 11 limbs), "
                        "the number of limb slots the policies read.")
    root_joints = torso.findall("joint")
    if len(root_joints) != 1 or root_joints[0].get("type") != "free":
        raise _not_unimal(path, "the torso/0 body must hold exactly one free joint")
    dof = 0
    for body in bodies[1:]:
        name = body.get("name", "")
        match = _LIMB_NAME.match(name)
        if not match:
            raise _not_unimal(path, f"body {name!r} is not named limb/N")
        joints = body.findall("joint")
        if len(joints) > MAX_JOINTS_PER_LIMB:
            raise DataError(f"{path}: limb {name!r} has {len(joints)} joints; a UNIMAL limb has at most "
                            f"{MAX_JOINTS_PER_LIMB} (its x and y joint slots).")
        if not joints:
            raise _not_unimal(path, f"limb {name!r} has no joint")
        kinds = []
        for joint in joints:
            jm = _JOINT_NAME.match(joint.get("name", ""))
            if not jm or jm.group(2) != match.group(1):
                raise _not_unimal(path, f"joint {joint.get('name')!r} of {name!r} is not named limbx/{match.group(1)} or limby/{match.group(1)}")
            kinds.append(jm.group(1))
        if kinds not in (["x"], ["y"], ["x", "y"]):
            raise _not_unimal(path, f"limb {name!r} has joints {kinds}; expected x, y, or x then y")
        dof += len(joints)
        if len(body.findall("geom")) != 1:
            raise _not_unimal(path, f"limb {name!r} must hold exactly one geom")
    if len(torso.findall("geom")) != 1:
        raise _not_unimal(path, "the torso/0 body must hold exactly one geom")
    return len(bodies) - 1, dof


def _check_no_file_references(root: ET.Element, path: Path) -> None:
    """A robot file is self-contained: MuJoCo would read an ``<include>`` or a ``file=`` attribute from
    anywhere on the machine (relative ones from the current folder), so neither is accepted."""
    for elem in root.iter():
        if elem.tag == "include":
            raise _not_unimal(path, f"it has an <include file={elem.get('file')!r}>; robot files must not include "
                                    "other files")
        for attr in elem.attrib:
            if attr.startswith("file") or attr.endswith("file") or attr in ("assetdir", "meshdir", "texturedir"):
                raise _not_unimal(path, f"<{elem.tag}> has a {attr}= attribute; robot files must not refer to "
                                        "other files")


def _strip_materials(elem: ET.Element) -> None:
    for e in elem.iter():
        if e.get("material") is not None and e.get("material") not in MATERIALS:
            del e.attrib["material"]


def assemble(xml_path: str | Path, metadata: dict | None = None, name: str | None = None, task: str = "ft") -> RobotXml:
    """Validate a robot file (and its metadata) and merge it into the arena of ``task``: the flat floor (``ft``)
    or the height field of a terrain task (``vt``, ``obstacle``; its heights are written per episode).

    Any way a damaged file can fail is a ``DataError`` naming the file.
    """
    if task != "ft" and task not in TERRAINS:
        raise unknown_name("UNIMAL task", task, ["ft", *TERRAINS])
    try:
        return _assemble(xml_path, metadata, name, task)
    except DataError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        raise _not_unimal(Path(xml_path), f"its structure is unexpected ({type(exc).__name__}: {exc})") from None


def _assemble(xml_path: str | Path, metadata: dict | None = None, name: str | None = None, task: str = "ft") -> RobotXml:  # noqa: C901 (one step per XML part, in order)
    path = Path(xml_path)
    name = name or path.stem
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, LookupError, ValueError) as exc:  # LookupError: an unknown declared encoding
        raise DataError(f"{path} is not valid XML ({exc}); re-install the robots with `kdistill data fetch unimal`.") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}).") from None
    if root.tag != "mujoco":
        raise _not_unimal(path, f"the root element is <{root.tag}>, not <mujoco>")
    _check_no_file_references(root, path)
    worldbody = root.find("worldbody")
    torso = worldbody.find("body") if worldbody is not None else None
    if torso is None or torso.get("name") != "torso/0" or len(worldbody.findall("body")) != 1:
        raise _not_unimal(path, "the worldbody must hold a single body named torso/0")
    num_limbs, dof = _check_tree(torso, path)

    if metadata is not None:
        for key, have in (("num_limbs", num_limbs), ("dof", dof)):
            if key not in metadata:
                raise DataError(f"the metadata of robot {name!r} has no {key!r}; re-install the robots with `kdistill data fetch unimal`.")
            try:
                said = int(metadata[key])
            except (TypeError, ValueError, OverflowError):
                said = None
            if said != have:
                raise DataError(f"the metadata of robot {name!r} says {key}={metadata[key]} but its XML has {have}; "
                                "the robot files are inconsistent, re-install them with `kdistill data fetch unimal`.")

    # motors: exactly one per hinge joint
    actuator = root.find("actuator")
    motors = list(actuator) if actuator is not None else []
    joint_names = [j.get("name") for j in torso.iter("joint")][1:]
    driven = [m.get("joint") for m in motors]
    if any(m.tag != "motor" for m in motors) or sorted(map(str, driven)) != sorted(map(str, joint_names)) \
            or None in driven:
        raise _not_unimal(path, "every limb joint needs exactly one <motor>, and motors may drive nothing else")

    pos = _floats(torso.get("pos", "0 0 0"), "torso pos", path)
    if len(pos) != 3:
        raise _not_unimal(path, "torso/0 needs a 3-number pos")
    torso_z = pos[2] + FLOOR_TOP

    # arena -------------------------------------------------------------------------------------------
    arena = ET.Element("mujoco", {"model": f"unimal-{name}"})
    ET.SubElement(arena, "compiler", {"angle": "degree"})
    ET.SubElement(arena, "size", {"memory": "1M"})
    option = ET.SubElement(arena, "option", {"timestep": repr(TIMESTEP)})
    ET.SubElement(option, "flag", {"filterparent": "enable"})

    default = root.find("default")
    default = ET.Element("default") if default is None else default
    geom_default = default.find("geom")
    if geom_default is None:
        geom_default = ET.SubElement(default, "geom")
    geom_default.set("condim", str(GEOM_CONDIM))
    geom_default.set("friction", _fmt(GEOM_FRICTION))
    _strip_materials(default)
    arena.append(default)

    visual = ET.SubElement(arena, "visual")
    ET.SubElement(visual, "map", {"znear": "0.001"})  # relative to the extent, which the 200 m floor makes large
    asset = ET.SubElement(arena, "asset")
    ET.SubElement(asset, "texture", FLOOR_TEXTURE)
    for mat, rgba in MATERIALS.items():
        attrs_ = {"name": mat, "rgba": rgba}
        if mat == "floor":
            attrs_.update(texture="floor", texrepeat="1 1", texuniform="true", rgba="1 1 1 1")
        ET.SubElement(asset, "material", attrs_)

    world = ET.SubElement(arena, "worldbody")
    ET.SubElement(world, "light", {"directional": "true", "pos": "0 0 5", "dir": "0 0 -1", "diffuse": ".8 .8 .8",
                                   "castshadow": "false"})
    if task == "ft":
        ET.SubElement(world, "geom", {"name": "floor/0", "type": "box", "pos": "0 0 0",
                                      "size": _fmt(FLOOR_HALF_SIZE), "material": "floor"})
    else:
        terrain = TERRAINS[task]
        hsize, hpos = terrain.hfield_geometry()
        rows, cols = terrain.shape
        ET.SubElement(asset, "hfield", {"name": "terrain", "nrow": str(rows), "ncol": str(cols), "size": _fmt(hsize)})
        ET.SubElement(world, "geom", {"name": "floor/0", "type": "hfield", "hfield": "terrain", "pos": _fmt(hpos),
                                      "material": "floor"})
    torso.set("pos", _fmt([pos[0], pos[1], torso_z]))
    _strip_materials(torso)
    world.append(torso)

    act = ET.SubElement(arena, "actuator")
    for motor in motors:
        act.append(motor)

    return RobotXml(
        name=name,
        arena_xml=ET.tostring(arena, encoding="unicode"),
        torso_z=torso_z,
        orig_height=torso_z - FLOOR_TOP - FLOOR_OFFSET,
        num_limbs=num_limbs,
        dof=dof,
        task=task,
    )
