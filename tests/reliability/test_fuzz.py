"""Property-based tests: the robot loader and ``kdistill.deploy.runtime.load`` over mutated files.

Whatever the mutation, loading ends in a ``KdistillError`` or a valid object, never another exception. Each test
runs batches of examples until its share of the budget is spent: ``KDISTILL_FUZZ_SECONDS`` in all (default 60,
the CI budget; ``KDISTILL_FUZZ_SECONDS=600`` is the long run of docs/reliability.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from kdistill.errors import KdistillError

SEED_ROBOTS = ["floor-5506-3-10-01-14-19-06", "floor-1409-0-3-01-15-56-55", "vt-1409-8-6-02-19-32-04"]
BUDGET_S = float(os.environ.get("KDISTILL_FUZZ_SECONDS", "60"))
# derandomize off and an explicit seed per batch (Budget.run): hypothesis' CI profile derandomizes, which would
# replay the same 25 examples in every batch; seeded batches stay reproducible and still differ from each other
BATCH = settings(max_examples=25, deadline=None, database=None, derandomize=False,
                 suppress_health_check=list(HealthCheck))

FLOATS = ["0", "-0", "1", "-1", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "", " ", "x", "1 2", "1 2 3",
          "1 2 3 4", "0 0 0", "-120 120", "5 5", "1e9 1e9 1e9", "0.1 0.1 0.1 0.1 0.1 0.1 0.1"]
ATTRS = ["pos", "size", "range", "gear", "name", "joint", "type", "class", "axis", "mass", "density", "fromto",
         "file", "quat", "euler", "limited", "damping", "armature", "condim", "material", "ctrlrange", "xyaxes",
         "childclass", "solimplimit", "stiffness", "timestep", "meshdir"]
TAGS = ["body", "joint", "geom", "motor", "include", "site", "default", "worldbody", "actuator", "mujoco", "camera",
        "light", "compiler", "option", "mesh", "asset", "frame", "replicate", "composite", "x"]


class Budget:
    """Runs a hypothesis-decorated function in batches until ``seconds`` have passed; counts examples."""

    def __init__(self, seconds: float):
        self.seconds, self.examples, self.batches = seconds, 0, 0

    def run(self, fn) -> None:
        end = time.monotonic() + self.seconds
        while True:
            seed(1409 + self.batches)(fn)()
            self.batches += 1
            if time.monotonic() >= end:
                break


def text_value():
    return st.one_of(st.sampled_from(FLOATS), st.text(max_size=12),
                     st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=7).map(
                         lambda xs: " ".join(repr(x) for x in xs)))


def json_value():
    return st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                        max_leaves=12)


def mutate_bytes(data, blob: bytes) -> bytes:
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "truncate", "repeat"]))
        if not blob:
            blob = data.draw(st.binary(max_size=16))
            continue
        i = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob = blob[:i] + bytes([blob[i] ^ data.draw(st.integers(1, 255))]) + blob[i + 1:]
        elif op == "cut":
            blob = blob[:i] + blob[i + data.draw(st.integers(1, 64)):]
        elif op == "insert":
            blob = blob[:i] + data.draw(st.binary(min_size=1, max_size=16)) + blob[i:]
        elif op == "truncate":
            blob = blob[:i]
        else:
            j = data.draw(st.integers(i, min(len(blob), i + 64)))
            blob = blob[:j] + blob[i:j] + blob[j:]
    return blob


def mutate_tree(data, root: ET.Element) -> None:
    for _ in range(data.draw(st.integers(1, 5))):
        elems = list(root.iter())
        parents = {c: p for p in elems for c in p}
        elem = data.draw(st.sampled_from(elems))
        op = data.draw(st.sampled_from(["drop", "dup", "attr", "delattr", "tag", "move", "child"]))
        if op == "drop" and elem in parents:
            parents[elem].remove(elem)
        elif op == "dup" and elem in parents:
            parent = parents[elem]
            parent.insert(list(parent).index(elem), copy.deepcopy(elem))
        elif op == "attr":
            elem.set(data.draw(st.sampled_from(ATTRS + list(elem.attrib))), data.draw(text_value()))
        elif op == "delattr" and elem.attrib:
            del elem.attrib[data.draw(st.sampled_from(sorted(elem.attrib)))]
        elif op == "tag":
            elem.tag = data.draw(st.sampled_from(TAGS))
        elif op == "move" and elem in parents:
            target = data.draw(st.sampled_from(elems))
            if target is not elem and elem not in target.iter() and target is not None:
                parents[elem].remove(elem)
                target.append(elem)
        elif op == "child":
            child = ET.SubElement(elem, data.draw(st.sampled_from(TAGS)))
            for _ in range(data.draw(st.integers(0, 3))):
                child.set(data.draw(st.sampled_from(ATTRS)), data.draw(text_value()))


def mutate_metadata(data, meta: dict) -> bytes:
    op = data.draw(st.sampled_from(["keep", "value", "delete", "replace", "bytes"]))
    meta = dict(meta)
    if op == "value":
        meta[data.draw(st.sampled_from(["num_limbs", "dof", "other"]))] = data.draw(json_value())
    elif op == "delete":
        meta.pop(data.draw(st.sampled_from(["num_limbs", "dof"])), None)
    elif op == "replace":
        return json.dumps(data.draw(json_value())).encode()
    text = json.dumps(meta).encode()
    return mutate_bytes(data, text) if op == "bytes" else text


def check_robot(robot) -> None:
    from kdistill_unimal import features as F

    assert 1 <= robot.num_limbs <= 11 and robot.dof >= 1
    assert robot.context.shape == (F.MAX_LIMBS, F.CONTEXT_FEATURES) and np.isfinite(robot.context).all()
    assert np.isfinite(robot.obs_template).all()
    sim = robot.new_sim()
    sim.reset(np.random.default_rng(0), 0.005)
    sim.step(np.zeros(F.MAX_LIMBS * F.JOINT_SLOTS))
    assert sim.observe().shape == (F.MAX_LIMBS, F.OBS_FEATURES)


def test_robot_loader_over_mutated_files(unimal_dir):
    from kdistill_unimal.arena import assemble
    from kdistill_unimal.robot import Robot, read_metadata

    seeds = [((unimal_dir / "train" / "xml" / f"{n}.xml").read_bytes(),
              json.loads((unimal_dir / "train" / "metadata" / f"{n}.json").read_text())) for n in SEED_ROBOTS]
    budget = Budget(BUDGET_S / 2)
    outcomes = {"error": 0, "robot": 0}

    with tempfile.TemporaryDirectory() as tmp:
        xml_path, meta_path = Path(tmp) / "r.xml", Path(tmp) / "r.json"

        @BATCH
        @given(st.data())
        def one(data):
            xml_bytes, meta = seeds[data.draw(st.integers(0, len(seeds) - 1))]
            how = data.draw(st.sampled_from(["tree", "bytes", "both", "metadata"]))
            if how in ("tree", "both"):
                root = ET.fromstring(xml_bytes)
                mutate_tree(data, root)
                xml_bytes = ET.tostring(root)
            if how in ("bytes", "both"):
                xml_bytes = mutate_bytes(data, xml_bytes)
            xml_path.write_bytes(xml_bytes)
            meta_path.write_bytes(mutate_metadata(data, meta) if how != "tree" else json.dumps(meta).encode())
            budget.examples += 1
            try:
                robot = Robot(assemble(xml_path, read_metadata(meta_path, "r"), name="r"))
            except KdistillError:
                outcomes["error"] += 1
                return
            outcomes["robot"] += 1
            check_robot(robot)

        budget.run(one)
    print(f"robot loader: {budget.examples} examples in {budget.batches} batches; {outcomes}")
    assert outcomes["error"] > 0  # the mutations do reach the error paths


def _export_files(pipeline) -> tuple[dict, dict]:
    from safetensors.numpy import load_file

    stem = pipeline["export"]
    return json.loads(stem.with_suffix(".json").read_text()), load_file(str(stem.with_suffix(".safetensors")))


def _pack(arrays: dict[str, np.ndarray], header_change=None) -> bytes:
    """A safetensors blob; ``header_change(header)`` may tamper with the header before it is written."""
    codes = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64",
             np.dtype(np.bool_): "BOOL"}
    header, parts, offset = {}, [], 0
    for name, arr in arrays.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": codes.get(arr.dtype, "F32"), "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        parts.append(raw)
        offset += len(raw)
    if header_change is not None:
        header_change(header)
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(parts)


def test_runtime_load_over_mutated_exports(pipeline):  # noqa: C901 (one mutation per case)
    from kdistill.deploy import runtime

    base_meta, base_arrays = _export_files(pipeline)
    budget = Budget(BUDGET_S / 2)
    outcomes = {"error": 0, "policy": 0}

    with tempfile.TemporaryDirectory() as tmp:
        stem = Path(tmp) / "policy"

        @BATCH
        @given(st.data())
        def one(data):  # noqa: C901 (one mutation per case)
            meta = copy.deepcopy(base_meta)
            arrays = {k: v.copy() for k, v in base_arrays.items()}
            for _ in range(data.draw(st.integers(1, 3))):
                op = data.draw(st.sampled_from(["meta value", "meta delete", "meta nested", "array value",
                                                "array shape", "array dtype", "array drop", "header"]))
                if op == "meta value":
                    meta[data.draw(st.sampled_from(sorted(meta) + ["x"]))] = data.draw(json_value())
                elif op == "meta delete":
                    meta.pop(data.draw(st.sampled_from(sorted(meta))), None)
                elif op == "meta nested":
                    part = data.draw(st.sampled_from(["input", "normalizer", "layers"]))
                    if isinstance(meta.get(part), dict) and meta[part]:
                        meta[part][data.draw(st.sampled_from(sorted(meta[part])))] = data.draw(json_value())
                    elif isinstance(meta.get(part), list) and meta[part]:
                        meta[part][data.draw(st.integers(0, len(meta[part]) - 1))] = data.draw(json_value())
                elif op == "array value":
                    name = data.draw(st.sampled_from(sorted(arrays)))
                    flat = arrays[name].reshape(-1)
                    if flat.size:
                        value = data.draw(st.floats(width=32))
                        try:
                            flat[data.draw(st.integers(0, flat.size - 1))] = value
                        except (OverflowError, ValueError):  # a float that does not fit an integer dtype
                            pass
                elif op == "array shape":
                    name = data.draw(st.sampled_from(sorted(arrays)))
                    shape = data.draw(st.lists(st.integers(0, 70), max_size=3))
                    arrays[name] = np.zeros(shape, arrays[name].dtype)
                elif op == "array dtype":
                    name = data.draw(st.sampled_from(sorted(arrays)))
                    arrays[name] = arrays[name].astype(data.draw(st.sampled_from([np.float64, np.float32, np.int64,
                                                                                  np.bool_])))
                elif op == "array drop":
                    arrays.pop(data.draw(st.sampled_from(sorted(arrays))), None)
            header_change = None
            if data.draw(st.booleans()):
                field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry"]))
                value = data.draw(json_value())

                def header_change(header):
                    name = sorted(header)[0] if header else "x"
                    if field == "entry":
                        header[name] = value
                    elif isinstance(header.get(name), dict):
                        header[name][field] = value

            blob = _pack(arrays, header_change)
            if data.draw(st.booleans()):
                blob = mutate_bytes(data, blob)
            if data.draw(st.integers(0, 9)) > 0:  # mostly re-signed, so the checks past the checksum are reached
                meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
            text = json.dumps(meta).encode()
            if data.draw(st.integers(0, 9)) == 0:
                text = mutate_bytes(data, text)
            stem.with_suffix(".safetensors").write_bytes(blob)
            stem.with_suffix(".json").write_bytes(text)
            budget.examples += 1
            try:
                policy = runtime.load(stem)
            except KdistillError:
                outcomes["error"] += 1
                return
            outcomes["policy"] += 1
            x = np.zeros((3, policy.input_size), np.float32)
            with np.errstate(all="ignore"):
                assert policy.act(x).shape == (3, len(policy.act_mask))
                assert policy.act(x[0]).shape == (len(policy.act_mask),)

        budget.run(one)
    print(f"runtime.load: {budget.examples} examples in {budget.batches} batches; {outcomes}")
    assert outcomes["error"] > 0 and outcomes["policy"] > 0
