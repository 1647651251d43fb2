"""``kdistill env check`` and ``kdistill data fetch``, through click's runner and once as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from click.testing import CliRunner

from kdistill.cli.app import app
from kdistill.errors import UnknownNameError

SMALL = "floor-5506-3-10-01-14-19-06"
LARGE = "vt-5506-1-16-02-19-08-46"


def invoke(*args):
    """Run the CLI in this process; stdout and stderr are kept apart."""
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


def kdistill_subprocess(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "KDISTILL_UNIMAL_DIR"}
    env["XDG_CACHE_HOME"] = str(cwd or ".") + "/no-cache"
    return subprocess.run([sys.executable, "-m", "kdistill.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def copy_robot(unimal_dir, dest, split, name, into_split=None):
    into = dest / (into_split or split)
    for kind, ext in (("xml", ".xml"), ("metadata", ".json")):
        (into / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy(unimal_dir / split / kind / f"{name}{ext}", into / kind / f"{name}{ext}")


def test_env_check_json(unimal_dir, tmp_path):
    copy_robot(unimal_dir, tmp_path / "set", "train", SMALL)
    copy_robot(unimal_dir, tmp_path / "set", "train", SMALL, into_split="test")  # a robot in both splits
    copy_robot(unimal_dir, tmp_path / "set", "test", LARGE)
    res = invoke("env", "check", "unimal", "--split", "all", "--steps", "40", "--data-dir", str(tmp_path / "set"), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # stdout holds the JSON document and nothing else
    rows = {(r["name"], r["split"]): r for r in doc["tasks"]}
    assert set(rows) == {(SMALL, "train"), (SMALL, "test"), (LARGE, "test")}
    for r in rows.values():
        assert r["ok"] is True and r["error"] is None and r["steps"] == 40 and r["steps_per_s"] > 0
    assert rows[(LARGE, "test")]["limbs"] == 10 and rows[(LARGE, "test")]["dof"] == 16
    assert doc["failed"] == 0 and doc["total"] == 3

    res = invoke("env", "check", "unimal", "--robots", LARGE, "--steps", "10", "--data-dir", str(tmp_path / "set"), "--json")
    assert [r["name"] for r in json.loads(res.stdout)["tasks"]] == [LARGE]


def test_env_check_fails_on_a_broken_robot(unimal_dir, tmp_path):
    copy_robot(unimal_dir, tmp_path / "set", "train", SMALL)
    meta = tmp_path / "set" / "train" / "metadata" / f"{SMALL}.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "num_limbs": 9}))
    res = invoke("env", "check", "unimal", "--split", "train", "--steps", "10", "--data-dir", str(tmp_path / "set"), "--json")
    assert res.exit_code == 1
    (row,) = json.loads(res.stdout)["tasks"]
    assert row["ok"] is False and "num_limbs=9" in row["error"]
    # the table view reports it too
    res = invoke("env", "check", "unimal", "--steps", "10", "--data-dir", str(tmp_path / "set"))
    assert res.exit_code == 1 and "0/1 tasks pass" in res.stdout


def test_missing_data_and_unknown_robot_are_one_line_errors(unimal_dir, tmp_path, monkeypatch):
    # no robots and no network (the archive's URL leads nowhere): installing on first use fails in one line
    monkeypatch.setenv("KDISTILL_UNIMAL_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    res = kdistill_subprocess("env", "check", "unimal", "--data-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert "kdistill data fetch unimal" in res.stderr and "KDISTILL_UNIMAL_DIR" in res.stderr
    assert "Installing it on first use failed" in res.stderr and "check the connection" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "none").exists()
    res = invoke("env", "check", "unimal", "--robots", SMALL + "x", "--data-dir", str(unimal_dir))
    assert isinstance(res.exception, UnknownNameError) and f"Did you mean '{SMALL}'" in str(res.exception)


def test_data_fetch_from_archive(unimal_dir, tmp_path):
    archive = tmp_path / "robots.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(unimal_dir / split / "xml", arcname=f"repo/data/{split}/xml")
            tar.add(unimal_dir / split / "metadata", arcname=f"repo/data/{split}/metadata")
    target = tmp_path / "installed"
    res = invoke("data", "fetch", "unimal", "--from", str(archive), "--data-dir", str(target), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["robots"] == {"train": 100, "test": 102} and doc["path"] == str(target.absolute())
    assert (target / "test" / "xml" / f"{LARGE}.xml").read_bytes() == (unimal_dir / "test" / "xml" / f"{LARGE}.xml").read_bytes()


@pytest.mark.parametrize("args", [("env", "check", "--help"), ("data", "fetch", "--help")])
def test_help(args):
    res = invoke(*args)
    assert res.exit_code == 0 and "DOMAIN" in res.stdout


@pytest.mark.slow
def test_every_robot_passes_the_env_check(unimal_dir):
    """The issue's acceptance check: all 202 robots (train 100 + test 102), 1000 random steps each."""
    res = invoke("env", "check", "unimal", "--split", "all", "--data-dir", str(unimal_dir), "--json")
    doc = json.loads(res.stdout)
    assert res.exit_code == 0, [r for r in doc["tasks"] if not r["ok"]][:3]
    assert doc["total"] == 202 and doc["passed"] == 202
    assert all(r["steps"] == 1000 and r["unstable"] == 0 for r in doc["tasks"])
