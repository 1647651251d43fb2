"""Finding, validating and installing UNIMAL robot files; every bad input gives one clear error."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kdistill.errors import DataError, UnknownNameError
from kdistill_unimal import data as unimal_data
from kdistill_unimal.domain import UnimalDomain
from kdistill_unimal.env import RobotLibrary, UnimalEnv

MEDIAN = "floor-1409-11-11-01-08-26-42"
LARGE = "vt-5506-1-16-02-19-08-46"


def robot_paths(unimal_dir: Path, name: str) -> tuple[Path, Path, str]:
    for split in ("train", "test"):
        xml = unimal_dir / split / "xml" / f"{name}.xml"
        if xml.exists():
            return xml, unimal_dir / split / "metadata" / f"{name}.json", split
    raise FileNotFoundError(name)


def make_set(root: Path, robots: dict[str, tuple[str, dict | None]]) -> Path:
    """A robot set in ``root/train`` with the given XML texts and metadata (None = no metadata file)."""
    (root / "train" / "xml").mkdir(parents=True)
    (root / "train" / "metadata").mkdir(parents=True)
    for name, (xml_text, meta) in robots.items():
        (root / "train" / "xml" / f"{name}.xml").write_text(xml_text)
        if meta is not None:
            (root / "train" / "metadata" / f"{name}.json").write_text(json.dumps(meta))
    return root


def original(unimal_dir: Path, name: str) -> tuple[ET.Element, dict]:
    xml, meta, _ = robot_paths(unimal_dir, name)
    return ET.parse(xml).getroot(), json.loads(meta.read_text())


def load(root: Path, name: str):
    return UnimalEnv(name, data_dir=root)


# manifest ------------------------------------------------------------------------------------------

def test_manifest_lists_exactly_the_robot_files(unimal_dir):
    manifest = unimal_data.load_manifest()
    on_disk = {}
    for split in ("train", "test"):
        for kind in ("xml", "metadata"):
            for f in (unimal_dir / split / kind).iterdir():
                on_disk[f"{split}/{kind}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    assert manifest == on_disk
    assert len(manifest) == 2 * (100 + 102)


# locating the data ---------------------------------------------------------------------------------

def test_missing_data_names_the_fetch_command_and_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv("KDISTILL_UNIMAL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError) as err:
        UnimalDomain().splits()
    message = str(err.value)
    assert "kdistill data fetch unimal" in message and "KDISTILL_UNIMAL_DIR" in message
    assert str(tmp_path / "cache" / "kdistill" / "unimal") in message
    assert "\n" not in message


def test_data_dir_order(tmp_path, monkeypatch, unimal_dir):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("KDISTILL_UNIMAL_DIR", str(unimal_dir))
    assert UnimalDomain().splits()["train"][0] == sorted(p.stem for p in (unimal_dir / "train" / "xml").glob("*.xml"))[0]
    # an explicit data_dir wins over the env var
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no UNIMAL robot set"):
        UnimalDomain(data_dir=empty).splits()
    # without either, the user cache is used
    monkeypatch.delenv("KDISTILL_UNIMAL_DIR")
    cache = tmp_path / "cache" / "kdistill" / "unimal"
    shutil.copytree(unimal_dir / "test", cache / "test")
    assert set(UnimalDomain().splits()) == {"test"}


def test_unknown_robot_suggests_the_closest(unimal_dir):
    with pytest.raises(UnknownNameError, match=f"Did you mean '{MEDIAN}'"):
        UnimalEnv(MEDIAN[:-1] + "7", data_dir=unimal_dir)
    with pytest.raises(UnknownNameError):
        UnimalDomain(data_dir=unimal_dir).tasks(names=["no-such-robot"])


# malformed robots ----------------------------------------------------------------------------------

def test_unparseable_xml(tmp_path, unimal_dir):
    root, meta = original(unimal_dir, MEDIAN)
    text = ET.tostring(root, encoding="unicode")
    make_set(tmp_path, {"broken": (text[: len(text) // 2], meta)})
    with pytest.raises(DataError, match="is not valid XML"):
        load(tmp_path, "broken")


def test_not_a_unimal_file(tmp_path, unimal_dir):
    root, meta = original(unimal_dir, MEDIAN)
    root.find("worldbody/body").set("name", "robot")
    make_set(tmp_path, {"renamed": (ET.tostring(root, encoding="unicode"), meta),
                        "other": ("<robot><link name='a'/></robot>", meta)})
    with pytest.raises(DataError, match="not a UNIMAL robot file.*torso/0"):
        load(tmp_path, "renamed")
    with pytest.raises(DataError, match="root element is <robot>"):
        load(tmp_path, "other")


def _add_limb(parent: ET.Element, actuator: ET.Element, index: int, joints=("x",)) -> ET.Element:
    body = ET.SubElement(parent, "body", {"name": f"limb/{index}", "pos": "0 0 -0.1"})
    for kind in joints:
        ET.SubElement(body, "joint", {"name": f"limb{kind}/{index}", "type": "hinge", "class": "normal_joint",
                                      "range": "-30 30", "axis": "1 0 0"})
        ET.SubElement(actuator, "motor", {"joint": f"limb{kind}/{index}", "gear": "150", "name": f"limb{kind}/{index}"})
    ET.SubElement(body, "geom", {"name": f"limb/{index}", "type": "capsule", "fromto": "0 0 0 0 0 -0.2", "size": "0.05"})
    return body


def test_too_many_bodies(tmp_path, unimal_dir):
    root, meta = original(unimal_dir, LARGE)  # 11 bodies
    torso = root.find("worldbody/body")
    _add_limb(torso, root.find("actuator"), 90)
    _add_limb(torso, root.find("actuator"), 91)
    meta.update(num_limbs=meta["num_limbs"] + 2, dof=meta["dof"] + 2)
    make_set(tmp_path, {"big": (ET.tostring(root, encoding="unicode"), meta)})
    with pytest.raises(DataError, match="has 13 bodies; UNIMAL robots have at most 12"):
        load(tmp_path, "big")


def test_too_many_joints_on_a_limb(tmp_path, unimal_dir):
    root, meta = original(unimal_dir, MEDIAN)
    limb = root.find("worldbody/body/body")
    ET.SubElement(limb, "joint", {"name": "limbx/99", "type": "hinge", "class": "normal_joint", "range": "-30 30"})
    ET.SubElement(limb, "joint", {"name": "limby/99", "type": "hinge", "class": "normal_joint", "range": "-30 30"})
    make_set(tmp_path, {"jointy": (ET.tostring(root, encoding="unicode"), meta)})
    with pytest.raises(DataError, match="has 3 joints; a UNIMAL limb has at most 2"):
        load(tmp_path, "jointy")


def test_metadata_missing_or_disagreeing(tmp_path, unimal_dir):
    root, meta = original(unimal_dir, MEDIAN)
    text = ET.tostring(root, encoding="unicode")
    make_set(tmp_path, {"nometa": (text, None), "wrongdof": (text, {**meta, "dof": meta["dof"] + 1}),
                        "nolimbs": (text, {"dof": meta["dof"]})})
    (tmp_path / "train" / "metadata" / "garbled.json").write_text("{not json")
    (tmp_path / "train" / "xml" / "garbled.xml").write_text(text)
    with pytest.raises(DataError, match="has no metadata file"):
        load(tmp_path, "nometa")
    with pytest.raises(DataError, match=f"says dof={meta['dof'] + 1} but its XML has {meta['dof']}"):
        load(tmp_path, "wrongdof")
    with pytest.raises(DataError, match="has no 'num_limbs'"):
        load(tmp_path, "nolimbs")
    with pytest.raises(DataError, match="is not valid JSON"):
        load(tmp_path, "garbled")


def test_motor_missing(tmp_path, unimal_dir):
    root, meta = original(unimal_dir, MEDIAN)
    actuator = root.find("actuator")
    actuator.remove(list(actuator)[0])
    make_set(tmp_path, {"nomotor": (ET.tostring(root, encoding="unicode"), meta)})
    with pytest.raises(DataError, match="exactly one <motor>"):
        load(tmp_path, "nomotor")


def test_a_bad_robot_does_not_break_the_others(tmp_path, unimal_dir):
    good_root, meta = original(unimal_dir, MEDIAN)
    make_set(tmp_path, {MEDIAN: (ET.tostring(good_root, encoding="unicode"), meta), "bad": ("<mujoco>", meta)})
    domain = UnimalDomain(data_dir=tmp_path)
    rows = domain.check([MEDIAN, "bad"], steps=20)
    assert [r["ok"] for r in rows] == [True, False]
    assert "not valid XML" in rows[1]["error"]
    env = domain.make_env(MEDIAN)
    env.reset(seed=0)
    assert np.isfinite(env.step(np.zeros(24))[1])


# installing ----------------------------------------------------------------------------------------

def _archive_members(unimal_dir: Path, prefix: str):
    for split in ("train", "test"):
        for kind in ("xml", "metadata"):
            for f in sorted((unimal_dir / split / kind).iterdir()):
                yield f, f"{prefix}data/{split}/{kind}/{f.name}"


def make_tarball(unimal_dir: Path, path: Path) -> Path:
    top = f"Universal-Morphology-Control-{unimal_data.COMMIT}/"
    with tarfile.open(path, "w:gz") as tar:
        for f, arc in _archive_members(unimal_dir, top):
            tar.add(f, arcname=arc)
        # other parts of the repository are ignored
        tar.add(unimal_dir / "train" / "xml" / f"{MEDIAN}.xml", arcname=f"{top}data/train_mutate_1000/xml/x.xml")
        tar.add(unimal_dir / "train" / "xml" / f"{MEDIAN}.xml", arcname=f"{top}modular/train/xml/y.xml")
    return path


def same_files(a: Path, b: Path) -> bool:
    for rel in unimal_data.load_manifest():
        if (a / rel).read_bytes() != (b / rel).read_bytes():
            return False
    return True


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and ".fetch-" in p.name]


def test_install_from_tarball(tmp_path, unimal_dir):
    archive = make_tarball(unimal_dir, tmp_path / "repo.tar.gz")
    target = tmp_path / "robots"
    calls = []
    result = unimal_data.install(target, archive, progress=lambda *a: calls.append(a))
    assert result["robots"] == {"train": 100, "test": 102}
    assert result["files"] == 404
    assert same_files(target, unimal_dir)
    assert not (target / "train_mutate_1000").exists() and not (target / "train" / "xml" / "y.xml").exists()
    marker = json.loads((target / unimal_data.INSTALL_MARKER).read_text())
    assert marker["commit"] == unimal_data.COMMIT
    assert ("verifying", 404, 404) in calls
    assert leftovers(tmp_path) == []
    # the installed set is usable
    assert UnimalEnv(MEDIAN, data_dir=target).reset(seed=0)[1]["task"] == MEDIAN


def test_install_from_zip_and_folder_and_replace(tmp_path, unimal_dir):
    archive = tmp_path / "robots.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f, arc in _archive_members(unimal_dir, ""):
            z.write(f, arc)
    target = tmp_path / "robots"
    unimal_data.install(target, archive)
    assert same_files(target, unimal_dir)
    (target / "stale-file").write_text("from the previous install")
    unimal_data.install(target, unimal_dir)  # a plain robot-set folder; replaces the previous install
    assert same_files(target, unimal_dir)
    assert not (target / "stale-file").exists()
    assert leftovers(tmp_path) == []


def test_altered_or_incomplete_source_installs_nothing(tmp_path, unimal_dir):
    source = tmp_path / "source"
    shutil.copytree(unimal_dir / "train", source / "train")
    shutil.copytree(unimal_dir / "test", source / "test")
    with open(source / "train" / "xml" / f"{MEDIAN}.xml", "a") as f:
        f.write("<!-- edited -->\n")
    target = tmp_path / "robots"
    with pytest.raises(DataError, match="1 file\\(s\\) differ from the manifest"):
        unimal_data.install(target, source)
    assert not target.exists()
    (source / "train" / "metadata" / f"{MEDIAN}.json").unlink()
    with pytest.raises(DataError, match="1 file\\(s\\) missing"):
        unimal_data.install(target, source)
    assert not target.exists() and leftovers(tmp_path) == []


def test_interrupted_install_keeps_the_previous_one(tmp_path, unimal_dir, monkeypatch):
    target = tmp_path / "robots"
    unimal_data.install(target, unimal_dir)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(unimal_data, "_verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        unimal_data.install(target, unimal_dir)
    assert same_files(target, unimal_dir)
    assert leftovers(tmp_path) == []
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        unimal_data.install(fresh, unimal_dir)
    assert not fresh.exists() and leftovers(tmp_path) == []


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        unimal_data.install(tmp_path / "t", tmp_path / "nope.tar.gz")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError):
        unimal_data.install(tmp_path / "t", junk)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no train/ or test/ robot set"):
        unimal_data.install(tmp_path / "t", empty)
    assert not (tmp_path / "t").exists() and leftovers(tmp_path) == []


def test_domain_fetch_data_installs_into_its_data_dir(tmp_path, unimal_dir):
    target = tmp_path / "robots"
    domain = UnimalDomain(data_dir=target)
    result = domain.fetch_data(str(make_tarball(unimal_dir, tmp_path / "a.tar.gz")))
    assert Path(result["path"]) == target.absolute()
    assert len(domain.splits()["test"]) == 102


def test_library_lists_both_splits(unimal_dir):
    lib = RobotLibrary(unimal_dir)
    assert len(lib.splits["train"]) == 100 and len(lib.splits["test"]) == 102
    assert lib.split_of(LARGE) == "test"
