"""New UNIMAL robots made from existing ones (``kdistill unimal mutate``): seeded mutation operators, each product
checked to be a valid robot.

Operators (each changes one thing of one robot file and reports what it changed):

============ =====================================================================================================
grow-limb    a new capsule limb (0.25-0.45 long, 1 or 2 hinge joints, a joint range of the 13 UNIMAL ranges, a gear of
             150-300) hanging from the end of an existing limb; only while the robot has fewer than 12 bodies
delete-limb  a leaf limb removed, with its motors (and the sensors and contact pairs that name it); only with 3+ limbs
joint-range  one joint's range changed to another of the 13 UNIMAL ranges
dof          one limb's joint count changed: a second joint added (perpendicular to the first and to the limb) or one
             of two removed, with its motor
density      one limb's density scaled by 0.6-1.5
gear         one motor's gear changed to another of 150, 200, 250, 300
limb-size    one limb's length scaled by 0.7-1.3 (what hangs from its end moves with it) and its radius by 0.8-1.2
============ =====================================================================================================

After an operator the torso's spawn height is set so that the robot's lowest point is as high above the floor as
the original's. A product is kept only if it is valid: it passes the loader's checks (at most 12 bodies, named limbs and
joints, one motor per joint), its metadata (``num_limbs``, ``dof``) agrees with its XML, it compiles, nothing new touches
at spawn, and 1000 steps of random actions run with no instability. (Nothing may touch at spawn that did not touch in
the parent: the arena drops the files' contact excludes, as the original did, so a few parents start touching.)
Otherwise another draw is tried. Everything is
drawn from ``numpy.random.default_rng([seed, crc32(robot name)])``, so a robot's variations do not depend on which
other robots are mutated with it.

Products are named ``PARENT--K-OPERATOR`` and written as ``OUT/xml/NAME.xml`` and ``OUT/metadata/NAME.json`` (the
metadata also records the mutation), with ``OUT/mutations.json`` listing every product: parent, operator, what
changed, size and check.
"""

from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from kdistill.errors import DataError, KdistillError
from kdistill_unimal import features as F
from kdistill_unimal.arena import MAX_BODIES, assemble

OPERATORS = ("grow-limb", "delete-limb", "joint-range", "dof", "density", "gear", "limb-size")
LIMB_RADIUS = 0.05
LIMB_DENSITY = 900.0
MAX_TRIES = 40


class Rejected(Exception):
    """This draw cannot be applied (or its product is not valid): try another."""


def _vec(text: str | None, n: int = 3) -> np.ndarray:
    v = np.array([float(x) for x in (text or "").split()], dtype=np.float64)
    if len(v) != n:
        raise Rejected(f"expected {n} numbers, got {text!r}")
    return v


def _fmt(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in np.asarray(v).reshape(-1))


def _limb_index(body: ET.Element) -> int:
    return int(body.get("name").split("/")[1])


class Genome:
    """A robot file (ElementTree) and its metadata, with the lookups the operators need."""

    def __init__(self, root: ET.Element, metadata: dict):
        self.root = root
        self.meta = metadata
        self.torso = root.find("worldbody").find("body")

    def limbs(self) -> list[ET.Element]:
        return [b for b in self.torso.iter("body") if b is not self.torso]

    def parent_map(self) -> dict[ET.Element, ET.Element]:
        return {c: p for p in self.torso.iter("body") for c in p.findall("body")}

    def motors(self) -> list[ET.Element]:
        act = self.root.find("actuator")
        return list(act) if act is not None else []

    def motor_of(self, joint: str) -> ET.Element | None:
        return next((m for m in self.motors() if m.get("joint") == joint), None)

    def geom(self, body: ET.Element) -> ET.Element:
        return body.find("geom")

    def axis(self, body: ET.Element) -> tuple[np.ndarray, float]:
        """Unit direction and length of a limb's capsule."""
        ft = _vec(self.geom(body).get("fromto"), 6)
        d = ft[3:] - ft[:3]
        length = float(np.linalg.norm(d))
        if length <= 0:
            raise Rejected("a limb of zero length")
        return d / length, length

    def counts(self) -> tuple[int, int]:
        limbs = self.limbs()
        return len(limbs), sum(len(b.findall("joint")) for b in limbs)

    def sync_metadata(self) -> None:
        n, dof = self.counts()
        self.meta["num_limbs"], self.meta["dof"] = n, dof
        names = {_limb_index(b) for b in self.limbs()}
        if isinstance(self.meta.get("symmetric_limbs"), list):
            self.meta["symmetric_limbs"] = [p for p in self.meta["symmetric_limbs"]
                                            if isinstance(p, list) and all(i in names for i in p)]

    def remove_references(self, names: set[str]) -> None:
        """Drop sensors, motors and contact pairs that name a removed joint, site or body."""
        for section in ("sensor", "actuator", "contact"):
            parent = self.root.find(section)
            if parent is None:
                continue
            for elem in list(parent):
                if any(elem.get(a) in names for a in ("joint", "site", "body", "body1", "body2")):
                    parent.remove(elem)


def _perpendicular(d: np.ndarray) -> np.ndarray:
    ref = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    a = np.cross(d, ref)
    return a / np.linalg.norm(a)


def _range_text(rng: np.random.Generator, exclude: tuple[float, float] | None = None) -> str:
    choices = [r for r in F.JOINT_ANGLES if exclude is None or not np.allclose(r, exclude)]
    lo, hi = choices[int(rng.integers(len(choices)))]
    return f"{lo:g} {hi:g}"


def _add_joint(g: Genome, body: ET.Element, kind: str, axis: np.ndarray, pos: np.ndarray, rng, before=None) -> dict:
    idx = _limb_index(body)
    name = f"limb{kind}/{idx}"
    joint = ET.Element("joint", {"name": name, "type": "hinge", "class": "normal_joint", "range": _range_text(rng),
                                 "pos": _fmt(pos), "axis": _fmt(axis)})
    children = list(body)
    at = children.index(before) if before is not None else 0
    body.insert(at, joint)
    gear = float(F.GEARS[int(rng.integers(len(F.GEARS)))])
    act = g.root.find("actuator")
    if act is None:
        act = ET.SubElement(g.root, "actuator")
    act.append(ET.Element("motor", {"joint": name, "gear": f"{gear:g}", "name": name}))
    return {"joint": name, "range": joint.get("range"), "axis": joint.get("axis"), "gear": gear}


# operators ----------------------------------------------------------------------------------------------------

def grow_limb(g: Genome, rng: np.random.Generator) -> dict:
    limbs = g.limbs()
    if len(limbs) + 1 >= MAX_BODIES:
        raise Rejected("12 bodies already")
    parent = limbs[int(rng.integers(len(limbs)))]
    ft = _vec(g.geom(parent).get("fromto"), 6)
    end = ft[3:]
    directions = [(0, 0, -1), (1, 0, -1), (-1, 0, -1), (0, 1, -1), (0, -1, -1), (1, 0, 0), (-1, 0, 0)]
    d = np.asarray(directions[int(rng.integers(len(directions)))], float)
    d /= np.linalg.norm(d)
    length = float(rng.choice([0.25, 0.35, 0.45]))
    idx = max(_limb_index(b) for b in limbs) + 1
    body = ET.SubElement(parent, "body", {"name": f"limb/{idx}", "pos": _fmt(end + LIMB_RADIUS * d)})
    joint_pos = -LIMB_RADIUS * d
    ET.SubElement(body, "geom", {"name": f"limb/{idx}", "type": "capsule", "fromto": _fmt(np.r_[np.zeros(3), length * d]),
                                 "size": f"{LIMB_RADIUS:g}", "density": f"{LIMB_DENSITY:g}"})
    a1 = _perpendicular(d)
    a2 = np.cross(d, a1)
    kinds = [["x", "y"], ["x"], ["y"]][int(rng.integers(3))]
    geom = g.geom(body)
    joints = []
    for kind in kinds:  # x before y, both before the geom
        joints.append(_add_joint(g, body, kind, a1 if kind == "x" else a2, joint_pos, rng, before=geom))
    return {"limb": f"limb/{idx}", "parent": parent.get("name"), "length": length, "direction": d.round(4).tolist(),
            "joints": joints}


def delete_limb(g: Genome, rng: np.random.Generator) -> dict:
    limbs = g.limbs()
    if len(limbs) < 3:
        raise Rejected("too few limbs")
    leaves = [b for b in limbs if b.find("body") is None]
    victim = leaves[int(rng.integers(len(leaves)))]
    parent = g.parent_map()[victim]
    joints = sorted(j.get("name") for b in victim.iter("body") for j in b.findall("joint"))
    names = {victim.get("name")} | set(joints) | {s.get("name") for s in victim.iter("site")}
    parent.remove(victim)
    g.remove_references(names)
    return {"limb": victim.get("name"), "parent": parent.get("name"), "joints": joints}


def joint_range(g: Genome, rng: np.random.Generator) -> dict:
    joints = [j for b in g.limbs() for j in b.findall("joint")]
    joint = joints[int(rng.integers(len(joints)))]
    old = joint.get("range")
    new = _range_text(rng, exclude=tuple(_vec(old, 2)) if old else None)
    joint.set("range", new)
    return {"joint": joint.get("name"), "from": old, "to": new}


def dof(g: Genome, rng: np.random.Generator) -> dict:
    limbs = g.limbs()
    body = limbs[int(rng.integers(len(limbs)))]
    joints = body.findall("joint")
    if len(joints) == 2:
        victim = joints[int(rng.integers(2))]
        body.remove(victim)
        g.remove_references({victim.get("name")})
        return {"limb": body.get("name"), "removed": victim.get("name")}
    (have,) = joints
    kind = "y" if have.get("name").startswith("limbx") else "x"
    d, _ = g.axis(body)
    a = _vec(have.get("axis", "0 0 1"))
    axis = np.cross(d, a)
    if np.linalg.norm(axis) < 1e-6:
        axis = _perpendicular(d)
    axis /= np.linalg.norm(axis)
    before = have if kind == "x" else g.geom(body)  # limbx/N comes before limby/N
    added = _add_joint(g, body, kind, axis, _vec(have.get("pos", "0 0 0")), rng, before=before)
    return {"limb": body.get("name"), "added": added}


def density(g: Genome, rng: np.random.Generator) -> dict:
    limbs = g.limbs()
    body = limbs[int(rng.integers(len(limbs)))]
    geom = g.geom(body)
    old = float(geom.get("density", "1000"))
    factor = float(rng.uniform(0.6, 1.5))
    geom.set("density", f"{old * factor:.6g}")
    return {"limb": body.get("name"), "from": old, "to": float(geom.get("density")), "factor": round(factor, 4)}


def gear(g: Genome, rng: np.random.Generator) -> dict:
    motors = g.motors()
    motor = motors[int(rng.integers(len(motors)))]
    old = float(motor.get("gear", "1"))
    choices = [x for x in F.GEARS if x != old]
    new = float(choices[int(rng.integers(len(choices)))])
    motor.set("gear", f"{new:g}")
    return {"motor": motor.get("name") or motor.get("joint"), "from": old, "to": new}


def limb_size(g: Genome, rng: np.random.Generator) -> dict:
    limbs = g.limbs()
    body = limbs[int(rng.integers(len(limbs)))]
    geom = g.geom(body)
    ft = _vec(geom.get("fromto"), 6)
    d, length = g.axis(body)
    scale = float(rng.uniform(0.7, 1.3))
    shift = (scale - 1.0) * length * d
    geom.set("fromto", _fmt(np.r_[ft[:3], ft[:3] + scale * (ft[3:] - ft[:3])]))
    radius_scale = float(rng.uniform(0.8, 1.2))
    old_r = float(geom.get("size", str(LIMB_RADIUS)).split()[0])
    geom.set("size", f"{old_r * radius_scale:.6g}")
    moved = []
    for child in list(body.findall("body")) + list(body.findall("site")):
        p = _vec(child.get("pos", "0 0 0"))
        if float(np.dot(p - ft[:3], d)) > 0.5 * length:  # hangs from the far half: moves with the end
            child.set("pos", _fmt(p + shift))
            if child.tag == "body":
                moved.append(child.get("name"))
    return {"limb": body.get("name"), "length_from": round(length, 6), "length_to": round(scale * length, 6),
            "radius_from": old_r, "radius_to": float(geom.get("size")), "moved": moved}


APPLY: dict[str, Callable[[Genome, np.random.Generator], dict]] = {
    "grow-limb": grow_limb, "delete-limb": delete_limb, "joint-range": joint_range, "dof": dof,
    "density": density, "gear": gear, "limb-size": limb_size,
}


# checks -------------------------------------------------------------------------------------------------------

def _lowest_point(model, data) -> float:
    """Lowest z of the robot's geoms (capsules and spheres; the floor, geom 0, left out)."""
    import mujoco

    low = math.inf
    for i in range(1, model.ngeom):
        r = model.geom_size[i, 0]
        z = data.geom_xpos[i, 2]
        if model.geom_type[i] == mujoco.mjtGeom.mjGEOM_CAPSULE:
            half = model.geom_size[i, 1] * abs(data.geom_xmat[i].reshape(3, 3)[2, 2])
            z -= half
        low = min(low, z - r)
    return float(low)


def _spawn(xml_text: str, name: str, workdir: Path):
    """Compile a robot file's arena; returns (model, data after mj_forward at the initial pose)."""
    import mujoco

    path = workdir / f"{name}.xml"
    path.write_text(xml_text)
    spec = assemble(path, None, name=name)
    model = mujoco.MjModel.from_xml_string(spec.arena_xml)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    return model, data


def spawn_contacts(xml_path: Path, meta_path: Path, name: str) -> int:
    """Contacts at the initial pose (the arena drops the files' contact excludes, so some robots start touching)."""
    from kdistill_unimal.robot import Robot, read_metadata

    robot = Robot(assemble(xml_path, read_metadata(meta_path, name), name=name))
    sim = robot.new_sim()
    sim.reset(np.random.default_rng(0), 0.0)
    return int(sim.data.ncon)


def check_robot(xml_path: Path, meta_path: Path, name: str, steps: int = 1000, seed: int = 0,
                max_contacts: int = 0) -> dict:
    """A product's validity: loader checks, metadata, compile, no more contacts at spawn than its parent
    (``max_contacts``), ``steps`` random steps with no instability."""
    from kdistill_unimal.env import UnimalEnv
    from kdistill_unimal.robot import Robot, read_metadata

    robot = Robot(assemble(xml_path, read_metadata(meta_path, name), name=name))  # DataError if not valid
    sim = robot.new_sim()
    rng = np.random.default_rng(seed)
    sim.reset(rng, 0.0)
    if sim.data.ncon > max_contacts:
        raise Rejected(f"{sim.data.ncon} contact(s) at spawn (the parent has {max_contacts})")

    class _Lib:
        def get(self, n, task="ft"):
            return robot

    env = UnimalEnv(name, library=_Lib())
    env.reset(seed=seed)
    episodes = unstable = 0
    actions = rng.uniform(-1, 1, (steps, F.MAX_LIMBS * F.JOINT_SLOTS)).astype(np.float32)
    for t in range(steps):
        _, _, terminated, truncated, info = env.step(actions[t])
        unstable += bool(info.get("unstable"))
        if terminated or truncated:
            episodes += 1
            env.reset()
    if unstable:
        raise Rejected(f"unstable {unstable} time(s) in {steps} random steps")
    return {"steps": steps, "episodes": episodes, "unstable": 0, "limbs": robot.num_limbs, "dof": robot.dof}


def robot_seed(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def mutate_robot(xml_path: Path, meta_path: Path, name: str, count: int, seed: int, out: Path,
                 operators: tuple[str, ...] = OPERATORS, steps: int = 1000, workdir: Path | None = None) -> list[dict]:
    """``count`` valid variations of one robot, written into ``out/xml`` and ``out/metadata``; their records."""
    import tempfile

    from kdistill.io import atomic_write_json, atomic_write_text

    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{xml_path} cannot be read as XML ({exc}).") from None
    try:
        meta0 = json.loads(Path(meta_path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"the metadata {meta_path} of robot {name!r} cannot be read ({exc}).") from None
    root0 = tree.getroot()
    rng = robot_seed(seed, name)
    records = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmpdir = Path(tmp)
        try:
            base_model, base_data = _spawn(ET.tostring(root0, encoding="unicode"), name, tmpdir)
        except KdistillError:
            raise
        base_low = _lowest_point(base_model, base_data)
        base_contacts = spawn_contacts(Path(xml_path), Path(meta_path), name)
        for k in range(count):
            op = operators[k % len(operators)] if len(operators) <= count else operators[int(rng.integers(len(operators)))]
            tried: list[str] = []
            for attempt in range(MAX_TRIES):
                if attempt and len(operators) > 1 and attempt % 5 == 0:  # an operator that keeps failing: another
                    op = operators[int(rng.integers(len(operators)))]
                product = f"{name}--{k}-{op}"
                g = Genome(copy.deepcopy(root0), copy.deepcopy(meta0))
                try:
                    change = APPLY[op](g, rng)
                    g.sync_metadata()
                    # same clearance under the lowest point as the parent
                    pos = _vec(g.torso.get("pos", "0 0 0"))
                    model, data = _spawn(ET.tostring(g.root, encoding="unicode"), product, tmpdir)
                    pos[2] += base_low - _lowest_point(model, data)
                    g.torso.set("pos", _fmt(pos))
                    g.meta["mutation"] = {"parent": name, "operator": op, "seed": seed, "index": k, "change": change}
                    xml_text = ET.tostring(g.root, encoding="unicode")
                    xml_tmp, meta_tmp = tmpdir / f"{product}.xml", tmpdir / f"{product}.json"
                    xml_tmp.write_text(xml_text)
                    meta_tmp.write_text(json.dumps(g.meta))
                    check = check_robot(xml_tmp, meta_tmp, product, steps=steps, seed=k, max_contacts=base_contacts)
                except (Rejected, DataError) as exc:
                    tried.append(f"{op}: {exc}")
                    continue
                (out / "xml").mkdir(parents=True, exist_ok=True)
                (out / "metadata").mkdir(parents=True, exist_ok=True)
                atomic_write_text(out / "xml" / f"{product}.xml", "<?xml version='1.0' encoding='UTF-8'?>\n" + xml_text + "\n")
                atomic_write_json(out / "metadata" / f"{product}.json", g.meta)
                records.append({"name": product, "parent": name, "operator": op, "change": change,
                                "num_limbs": g.meta["num_limbs"], "dof": g.meta["dof"],
                                "torso_z": float(pos[2]), "check": check, "rejected_draws": len(tried)})
                break
            else:
                raise KdistillError(f"no valid variation {k} of robot {name!r} in {MAX_TRIES} draws (last: {tried[-1]}); "
                                    f"try another --seed or other --operators.")
    return records
