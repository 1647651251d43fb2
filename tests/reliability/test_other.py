"""Robot files that reach outside themselves, split folders that cannot be read, ambiguous robot names, workers
that outlive a killed parent, an exploding robot during training, and file modes."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from kdistill.errors import DataError

SMALL = "floor-5506-3-10-01-14-19-06"
ROOT = Path(__file__).resolve().parents[2]


def robot_set(unimal_dir: Path, dest: Path, robots: dict[str, str] | None = None) -> Path:
    """A robot set with SMALL in train and test; ``robots`` adds train robots {name: xml text}."""
    for split in ("train", "test"):
        for kind, ext in (("xml", ".xml"), ("metadata", ".json")):
            (dest / split / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(unimal_dir / "train" / kind / f"{SMALL}{ext}", dest / split / kind / f"{SMALL}{ext}")
    meta = (unimal_dir / "train" / "metadata" / f"{SMALL}.json").read_text()
    for name, text in (robots or {}).items():
        (dest / "train" / "xml" / f"{name}.xml").write_text(text)
        (dest / "train" / "metadata" / f"{name}.json").write_text(meta)
    return dest


def small_xml(unimal_dir: Path) -> ET.ElementTree:
    return ET.parse(unimal_dir / "train" / "xml" / f"{SMALL}.xml")


@pytest.mark.parametrize("where", ["include in worldbody", "include at the top", "file attribute"])
def test_robot_files_cannot_pull_in_other_files(cli, unimal_dir, tmp_path, where):
    secret = tmp_path / "secret.xml"
    secret.write_text('<mujoco><worldbody><body name="x"><geom size="1"/></body></worldbody></mujoco>')
    tree = small_xml(unimal_dir)
    root = tree.getroot()
    if where == "include in worldbody":
        ET.SubElement(root.find("worldbody").find("body"), "include", {"file": str(secret)})
    elif where == "include at the top":
        root.insert(0, ET.Element("include", {"file": "secret.xml"}))
    else:
        ET.SubElement(root.find("default"), "mesh", {"file": str(secret)})
    data = robot_set(unimal_dir, tmp_path / "set", {"sneaky": ET.tostring(root, encoding="unicode")})
    from kdistill_unimal.domain import UnimalDomain

    with pytest.raises(DataError, match="sneaky.xml"):
        UnimalDomain(data_dir=data).context("sneaky")
    teacher = UnimalDomain().pretrained_teacher()
    res = cli("eval", "unimal", "--policy", teacher, "--robots", "sneaky", "--episodes", "1", "--data-dir", data)
    assert_one_line_error(res, "sneaky.xml", "other files")


def test_an_unreadable_split_folder_is_an_error(cli, unimal_dir, tmp_path, monkeypatch):
    data = robot_set(unimal_dir, tmp_path / "set")
    xml_dir = data / "train" / "xml"
    if os.geteuid() == 0:  # permissions do not stop root: make the listing fail as it would for a user
        import kdistill_unimal.data as unimal_data

        real = os.scandir

        def scandir(path="."):
            if Path(path) == xml_dir:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(unimal_data.os, "scandir", scandir)
    else:
        xml_dir.chmod(0)
    try:
        res = cli("env", "check", "unimal", "--split", "test", "--steps", "1", "--data-dir", data, "--json")
        assert_one_line_error(res, str(xml_dir), "Permission denied", as_json=True)
    finally:
        xml_dir.chmod(0o755)


def test_the_same_robot_name_in_both_splits_with_different_files_is_an_error(cli, unimal_dir, tmp_path):
    data = robot_set(unimal_dir, tmp_path / "set")
    with open(data / "test" / "xml" / f"{SMALL}.xml", "a") as f:
        f.write("<!-- another robot of the same name -->\n")
    res = cli("env", "check", "unimal", "--robots", SMALL, "--steps", "1", "--data-dir", data, "--json")
    assert_one_line_error(res, SMALL, "train/", "test/", as_json=True)


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_env_workers_die_when_the_trainer_is_killed(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kdistill.cli", "teacher", "train", "cartpole", "--workers", "2",
                             "--num-tasks", "2", "--steps", "4096000", "--threads", "1", "--out", str(tmp_path / "t"),
                             "--json"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        for _ in range(600):  # the workers start once the run is set up
            workers = _children(proc.pid)
            if len(workers) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert len(workers) >= 2 and proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(300):
            if not any(_alive(w) for w in workers):
                break
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers)
    finally:
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_an_exploding_robot_gives_a_summary_not_a_warning_per_step(cli, unimal_dir, tmp_path):
    tree = small_xml(unimal_dir)
    for motor in tree.getroot().find("actuator"):
        motor.set("gear", "1e9")
    data = robot_set(unimal_dir, tmp_path / "set", {"boom": ET.tostring(tree.getroot(), encoding="unicode")})
    res = cli("teacher", "train", "unimal", "--robots", "boom", "--steps", "4096", "--threads", "1",
              "--data-dir", data, "--out", tmp_path / "t")
    assert res.code == 0, res.err
    warnings = [line for line in res.err.splitlines() if "MuJoCo" in line]
    assert len(warnings) <= 1
    summary = [line for line in res.err.splitlines() if "went unstable" in line]
    assert len(summary) == 1 and "boom" in summary[0]
    res = cli("teacher", "train", "unimal", "--robots", "boom", "--steps", "4096", "--threads", "1",
              "--data-dir", data, "--out", tmp_path / "t2", "--json")
    assert res.code == 0 and res.json()["unstable_episodes"]["boom"] > 0


def _modes(folder: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_are_written_with_the_users_umask(cli, pipeline, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "exports" / "policy"
        res = cli("export", "cartpole", "--student", pipeline["student"], "--task", "train-00", "--out", out, "--json")
        assert res.code == 0, res.err
        res = cli("eval", "cartpole", "--policy", pipeline["teacher"], "--num-tasks", "1", "--episodes", "1",
                  "--no-random", "--out", tmp_path / "eval", "--json")
        assert res.code == 0, res.err
    finally:
        os.umask(old)
    assert _modes(tmp_path / "exports") == {0o666 & ~umask}
    assert _modes(tmp_path / "eval") == {0o666 & ~umask}
    assert stat.S_IMODE((tmp_path / "eval").stat().st_mode) == 0o777 & ~umask


def test_pipeline_files_are_not_private(pipeline):
    # the pipeline fixture wrote its files under the test process's umask (0022 unless changed)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("teacher", "expert", "student"):
        assert _modes(pipeline[name]) == {0o666 & ~umask}, name


def test_a_torn_metrics_line_is_skipped(tmp_path):
    """A process killed while appending to metrics.jsonl leaves half a line: readers skip it and keep the rest, and
    a resume, which rewrites the log with the records up to its checkpoint, appends after whole lines only."""
    from kdistill.io import append_jsonl, read_jsonl, truncate_jsonl

    log = tmp_path / "metrics.jsonl"
    append_jsonl(log, {"iteration": 1, "loss": 0.5})
    with open(log, "a") as f:
        f.write('{"iteration": 2, "lo')  # the kill
    assert read_jsonl(log) == [{"iteration": 1, "loss": 0.5}]
    truncate_jsonl(log, lambda r: r["iteration"] <= 1)  # what a resume from iteration 1's checkpoint does
    append_jsonl(log, {"iteration": 2, "loss": 0.25})
    assert read_jsonl(log) == [{"iteration": 1, "loss": 0.5}, {"iteration": 2, "loss": 0.25}]
