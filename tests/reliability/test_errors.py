"""Every error is one line on stderr naming the file or option and what to do, exit code 2, no traceback;
with --json also ``{"error": ...}`` on stdout."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import assert_one_line_error
from kdistill.io import latest_checkpoint

SMALL = "floor-5506-3-10-01-14-19-06"


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder in which no file can be created (for root, whom permissions do not stop, sysfs)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    folder = Path("/sys")
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        yield folder
        return
    os.close(fd)
    os.unlink(probe)
    pytest.skip("no unwritable folder on this machine")


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage", ["missing layout", "config not an object", "normalizer a number",
                                    "normalizer of another shape"])
def test_checkpoint_meta_with_missing_or_mistyped_keys(cli, pipeline, copy_of, damage):
    run = copy_of(pipeline["teacher"])
    meta = latest_checkpoint(run) / "meta.json"

    def change(doc):
        if damage == "missing layout":
            del doc["layout"]
        elif damage == "config not an object":
            doc["config"] = "small"
        elif damage == "normalizer a number":
            doc["normalizer"] = 5
        else:
            doc["normalizer"]["mean"] = doc["normalizer"]["mean"][:-1]
            doc["normalizer"]["var"] = doc["normalizer"]["var"][:-1]

    edit_json(meta, change)
    res = cli("eval", "cartpole", "--policy", run, "--num-tasks", "1", "--episodes", "1", "--json")
    assert_one_line_error(res, str(run), as_json=True)


@pytest.mark.parametrize("pointer", ["5", "[]", '{"checkpoint": 7}', '{"checkpoint": "../../etc"}', "{"])
def test_a_damaged_latest_json_falls_back_to_the_checkpoints(cli, pipeline, copy_of, pointer):
    run = copy_of(pipeline["teacher"])
    (run / "latest.json").write_text(pointer)
    assert latest_checkpoint(run).name.startswith("ckpt-")
    res = cli("eval", "cartpole", "--policy", run, "--num-tasks", "1", "--episodes", "1", "--no-random", "--json")
    assert res.code == 0, res.err


@pytest.mark.parametrize("damage", ["obs as int64", "mu of another shape", "missing action"])
def test_mistyped_expert_shards(cli, pipeline, copy_of, tmp_path, damage):
    data = copy_of(pipeline["expert"])
    shard = sorted((data / "shards").iterdir())[-1]
    arrays = load_file(str(shard))
    if damage == "obs as int64":
        arrays["obs"] = arrays["obs"].astype(np.int64)
    elif damage == "mu of another shape":
        arrays["mu"] = np.zeros((len(arrays["mu"]), 3), np.float32)
    else:
        del arrays["action"]
    save_file(arrays, str(shard))
    res = cli("distill", "cartpole", "--data", data, "--out", tmp_path / "s", "--batch", "64", "--epochs", "1",
              "--json")
    assert_one_line_error(res, shard.name, as_json=True)
    assert latest_checkpoint(tmp_path / "s") is None


@pytest.mark.parametrize("damage", ["student normaliser of another shape", "tasks a list", "context too short",
                                    "shard outside the folder", "layout missing"])
def test_mistyped_expert_meta_is_refused_before_training(cli, pipeline, copy_of, tmp_path, damage):
    data = copy_of(pipeline["expert"])

    def change(doc):
        if damage == "student normaliser of another shape":
            doc["student_normalizer"]["mean"] = [[0.0]]
        elif damage == "tasks a list":
            doc["tasks"] = list(doc["tasks"])
        elif damage == "context too short":
            first = next(iter(doc["tasks"].values()))
            first["context"]["tokens"] = []
        elif damage == "shard outside the folder":
            next(iter(doc["tasks"].values()))["shard"] = "../../../etc/passwd"
        else:
            del doc["layout"]

    edit_json(data / "meta.json", change)
    res = cli("distill", "cartpole", "--data", data, "--out", tmp_path / "s", "--batch", "64", "--epochs", "1",
              "--json")
    assert_one_line_error(res, "meta.json", as_json=True)
    assert not (tmp_path / "s" / "metrics.jsonl").exists()


def test_an_unwritable_output_folder_is_refused_before_the_work(cli, pipeline, unwritable_dir):
    res = cli("eval", "cartpole", "--policy", pipeline["teacher"], "--num-tasks", "1", "--episodes", "1",
              "--out", unwritable_dir, "--json")
    assert_one_line_error(res, "--out", str(unwritable_dir), as_json=True)
    assert "eval" not in json.loads(res.out)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(cli, pipeline, tmp_path, monkeypatch):
    import kdistill.io as kio

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(kio.os, "fsync", full)
    out = tmp_path / "exports" / "policy"
    res = cli("export", "cartpole", "--student", pipeline["student"], "--task", "train-00", "--out", out, "--json")
    assert_one_line_error(res, "no space left", as_json=True)
    assert list((tmp_path / "exports").iterdir()) == []


@pytest.mark.parametrize("args,option", [
    (["eval", "cartpole", "--policy", "{teacher}", "--threads", "0"], "--threads"),
    (["teacher", "train", "cartpole", "--out", "{tmp}/t", "--steps", "4096", "--threads", "0"], "--threads"),
    (["distill", "cartpole", "--data", "{expert}", "--out", "{tmp}/s", "--threads", "0"], "--threads"),
    (["expert", "collect", "cartpole", "--teacher", "{teacher}", "--out", "{tmp}/e", "--threads", "0"], "--threads"),
    (["teacher", "train", "cartpole", "--out", "{tmp}/t", "--steps", "4096", "--checkpoint-every", "-1"],
     "--checkpoint-every"),
    (["distill", "cartpole", "--data", "{expert}", "--out", "{tmp}/s", "--checkpoint-every", "-1"], "--checkpoint-every"),
    (["eval", "cartpole", "--policy", "{teacher}", "--device", "tpu"], "--device"),
    (["teacher", "train", "cartpole", "--out", "{tmp}/t", "--steps", "4096", "--device", "tpu"], "--device"),
    (["expert", "collect", "cartpole", "--teacher", "{teacher}", "--out", "{tmp}/e", "--device", "cuda:x"], "--device"),
    (["expert", "collect", "cartpole", "--teacher", "{teacher}", "--out", "{tmp}/e", "--samples-per-task", "0"],
     "--samples-per"),
    (["distill", "cartpole", "--data", "{expert}", "--out", "{tmp}/s", "--samples-per-task", "0"], "--samples-per-task"),
    (["demo", "cartpole", "--out", "{tmp}/d", "--samples-per-task", "0"], "--samples-per-task"),
    (["eval", "cartpole", "--policy", "{teacher}", "--no-such-option"], "--no-such-option"),
])
def test_bad_options_are_one_line(cli, pipeline, tmp_path, args, option):
    filled = [a.format(teacher=pipeline["teacher"], expert=pipeline["expert"], tmp=tmp_path) for a in args]
    res = cli(*filled, "--json")
    assert_one_line_error(res, option, as_json=True)
    assert not any(p.name in ("t", "s", "e", "d") for p in tmp_path.iterdir())  # nothing was created


def robot_set(unimal_dir: Path, dest: Path, name: str = SMALL) -> Path:
    for split in ("train", "test"):
        for kind, ext in (("xml", ".xml"), ("metadata", ".json")):
            (dest / split / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(unimal_dir / "train" / kind / f"{name}{ext}", dest / split / kind / f"{name}{ext}")
    return dest


def test_a_robot_with_no_limbs_is_one_line(cli, unimal_dir, tmp_path):
    import xml.etree.ElementTree as ET

    root = robot_set(unimal_dir, tmp_path / "set")
    xml = root / "train" / "xml" / f"{SMALL}.xml"
    tree = ET.parse(xml)
    torso = tree.getroot().find("worldbody").find("body")
    for limb in torso.findall("body"):
        torso.remove(limb)
    tree.getroot().remove(tree.getroot().find("actuator"))
    (root / "train" / "xml" / "limbless.xml").write_text(ET.tostring(tree.getroot(), encoding="unicode"))
    meta = json.loads((root / "train" / "metadata" / f"{SMALL}.json").read_text())
    (root / "train" / "metadata" / "limbless.json").write_text(json.dumps({**meta, "num_limbs": 0, "dof": 0}))
    from kdistill_unimal.domain import UnimalDomain

    teacher = UnimalDomain().pretrained_teacher()
    res = cli("eval", "unimal", "--policy", teacher, "--robots", "limbless", "--episodes", "1", "--data-dir", root,
              "--json")
    assert_one_line_error(res, "limbless.xml", "no limbs", as_json=True)


def test_user_text_is_never_read_as_markup(cli, pipeline):
    for name in ("robot[/x]", "[bold]robot[/bold]"):
        res = cli("eval", "cartpole", "--policy", pipeline["teacher"], "--robots", name)
        assert_one_line_error(res, name)


def test_an_unexpected_exception_is_still_one_line(cli, pipeline, monkeypatch):
    import kdistill.evaluate as ev

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(ev, "evaluate_policy", broken)
    monkeypatch.setenv("KDISTILL_DEBUG", "0")  # --debug below sets it to 1 for child processes: undone after the test
    res = cli("eval", "cartpole", "--policy", pipeline["teacher"], "--num-tasks", "1", "--json")
    assert_one_line_error(res, "ZeroDivisionError", "--debug", as_json=True)
    with pytest.raises(ZeroDivisionError):
        from kdistill.cli.app import main

        main(["--debug", "eval", "cartpole", "--policy", str(pipeline["teacher"]), "--num-tasks", "1"])
    with pytest.raises(ZeroDivisionError):  # where the error line's advice puts it: after the command
        main(["eval", "cartpole", "--policy", str(pipeline["teacher"]), "--num-tasks", "1", "--debug"])


@pytest.mark.parametrize("damage", ["weights truncated", "header corrupt", "offsets past the end", "tensor missing",
                                    "json not an object", "layers missing", "act_mask too short", "tokens wrong",
                                    "clip negative", "weights of another export"])
def test_tampered_exports_are_one_data_error(pipeline, copy_of, damage):
    import hashlib
    import struct

    from safetensors.numpy import save

    from kdistill.deploy import runtime
    from kdistill.errors import DataError

    stem = copy_of(pipeline["export"].with_suffix(".json")).with_suffix("")
    weights, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    weights.write_bytes(pipeline["export"].with_suffix(".safetensors").read_bytes())
    blob, meta = weights.read_bytes(), json.loads(meta_path.read_text())
    if damage == "weights truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "header corrupt":
        blob = blob[:8] + b"#" + blob[9:]
    elif damage == "offsets past the end":
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"] = [0, 10**9]
        head = json.dumps(header).encode()
        blob = struct.pack("<Q", len(head)) + head + blob[8 + n:]
    elif damage == "tensor missing":
        arrays = dict(load_file(str(weights)))
        del arrays["norm.var"]
        blob = save(arrays)
    elif damage == "json not an object":
        meta = [meta]
    elif damage == "layers missing":
        del meta["layers"]
    elif damage == "act_mask too short":
        meta["act_mask"] = meta["act_mask"][:-1]
    elif damage == "tokens wrong":
        meta["input"]["tokens"] += 1
    elif damage == "clip negative":
        meta["normalizer"]["clip"] = -1
    else:
        blob = save({k: v * 2 for k, v in load_file(str(weights)).items()})
    if damage != "weights of another export" and isinstance(meta, dict):
        meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    weights.write_bytes(blob)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError) as info:
        runtime.load(stem)
    assert "\n" not in str(info.value) and ("export" in str(info.value) or stem.name in str(info.value))
