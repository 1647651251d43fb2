"""Folders of robot files as task sets (--robots-dir) and installing the robots on first use."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest
from click.testing import CliRunner

from kdistill.cli.app import app
from kdistill.errors import DataError, KdistillError
from kdistill.tasks import select_tasks
from kdistill_unimal.domain import UnimalDomain
from student_run import write_student_run

SMALL = "floor-5506-3-10-01-14-19-06"
MEDIAN = "floor-1409-0-12-01-12-30-07"
LARGE = "vt-5506-1-16-02-19-08-46"


def invoke(*args, env=None):
    return CliRunner().invoke(app, list(args), catch_exceptions=True, env=env)


@pytest.fixture
def no_robot_set(tmp_path, monkeypatch):
    """No shipped robot set anywhere, and no network: any attempt to install one fails."""
    monkeypatch.setenv("KDISTILL_UNIMAL_DIR", str(tmp_path / "no-robots"))
    monkeypatch.setenv("KDISTILL_UNIMAL_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    return tmp_path


def flat_folder(unimal_dir, dest, robots):
    """NAME.xml with NAME.json beside it."""
    dest.mkdir(parents=True, exist_ok=True)
    for split, name in robots:
        shutil.copy(unimal_dir / split / "xml" / f"{name}.xml", dest / f"{name}.xml")
        shutil.copy(unimal_dir / split / "metadata" / f"{name}.json", dest / f"{name}.json")
    return dest


def test_a_folder_is_a_task_set_without_the_shipped_robots(unimal_dir, no_robot_set):
    folder = flat_folder(unimal_dir, no_robot_set / "mine", [("train", SMALL), ("test", LARGE)])
    domain = UnimalDomain()
    assert select_tasks(domain, tasks_dir=str(folder)) == [SMALL, LARGE]
    assert domain.make_env(LARGE).robot.dof == 16 and domain.context(SMALL).tokens.shape == (12, 53)
    assert select_tasks(domain, tasks=LARGE, tasks_dir=str(folder)) == [LARGE]
    with pytest.raises(KdistillError, match="unknown task"):
        select_tasks(domain, tasks=MEDIAN, tasks_dir=str(folder))
    # the xml/ + metadata/ layout is read too
    nested = no_robot_set / "nested"
    for kind, ext in (("xml", ".xml"), ("metadata", ".json")):
        (nested / kind).mkdir(parents=True)
        shutil.copy(unimal_dir / "train" / kind / f"{MEDIAN}{ext}", nested / kind / f"{MEDIAN}{ext}")
    assert select_tasks(UnimalDomain(), tasks_dir=str(nested)) == [MEDIAN]


def test_bad_folders_and_files_are_one_line_errors(unimal_dir, no_robot_set, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        UnimalDomain().add_task_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no UNIMAL robot files"):
        UnimalDomain().add_task_folder(tmp_path / "empty")
    folder = flat_folder(unimal_dir, tmp_path / "bad", [("train", SMALL)])
    meta = folder / f"{SMALL}.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "dof": 3}))
    with pytest.raises(DataError, match="says dof=3"):
        UnimalDomain().add_task_folder(folder)
    (folder / f"{SMALL}.json").unlink()
    with pytest.raises(DataError, match="has no metadata file"):
        UnimalDomain().add_task_folder(folder)
    shutil.copy(unimal_dir / "train" / "metadata" / f"{SMALL}.json", folder / f"{SMALL}.json")
    (folder / f"{SMALL}.xml").write_text("<mujoco><worldbody/>")
    res = invoke("env", "check", "unimal", "--robots-dir", str(folder), "--steps", "5")
    assert isinstance(res.exception, DataError)  # the CLI prints it as one line and exits with 2
    assert "not valid XML" in str(res.exception) and str(folder) in str(res.exception)


def test_a_clash_with_a_shipped_robot_is_refused(unimal_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_UNIMAL_DIR", str(unimal_dir))
    folder = flat_folder(unimal_dir, tmp_path / "same", [("train", SMALL)])
    assert UnimalDomain().add_task_folder(folder) == [SMALL]  # the same files: fine
    meta = folder / f"{SMALL}.json"
    meta.write_text(meta.read_text() + "\n")
    with pytest.raises(DataError, match="different files"):
        UnimalDomain().add_task_folder(folder)


def test_a_split_and_a_folder_together_give_the_splits_tasks_then_the_folders(unimal_dir, tmp_path):
    folder = flat_folder(unimal_dir, tmp_path / "mine", [("train", SMALL), ("test", LARGE)])
    domain = UnimalDomain(data_dir=str(unimal_dir))
    train = domain.tasks(split="train")
    assert SMALL in train and LARGE not in train
    # SMALL's files are the shipped ones: the same task, listed once
    assert select_tasks(domain, split="train", tasks_dir=str(folder)) == [*train, LARGE]
    assert select_tasks(domain, tasks=f"{LARGE},{MEDIAN}", split="train", tasks_dir=str(folder)) == [LARGE, MEDIAN]
    with pytest.raises(KdistillError, match="unknown task"):
        select_tasks(domain, tasks=MEDIAN, tasks_dir=str(folder))


def test_commands_take_robots_dir(unimal_dir, no_robot_set, one_torch_thread):
    folder = flat_folder(unimal_dir, no_robot_set / "mine", [("train", SMALL), ("test", LARGE)])
    res = invoke("env", "check", "unimal", "--robots-dir", str(folder), "--steps", "20", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["name"] for r in doc["tasks"]] == [SMALL, LARGE] and doc["passed"] == 2

    write_student_run(no_robot_set / "hn", UnimalDomain.layout, "unimal")
    res = invoke("eval", "unimal", "--policy", str(no_robot_set / "hn"), "--robots-dir", str(folder), "--episodes", "1",
                 "--no-random", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["name"] for r in doc["tasks"]] == [SMALL, LARGE] and doc["tasks_dir"] == str(folder)

    res = invoke("compare", "unimal", "--policies", f"hn={no_robot_set / 'hn'}", "--robots-dir", str(folder),
                 "--episodes", "1", "--num-tasks", "1", "--no-random", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tasks"] == {"mine": [SMALL]}

    res = invoke("export", "unimal", "--student", str(no_robot_set / "hn"), "--robot", LARGE, "--robots-dir",
                 str(folder), "--out", str(no_robot_set / "exp" / "large"), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["task"] == LARGE
    res = invoke("export", "unimal", "--student", str(no_robot_set / "hn"), "--robot", MEDIAN, "--robots-dir",
                 str(folder), "--out", str(no_robot_set / "exp" / "median"))
    assert isinstance(res.exception, KdistillError) and "unknown task" in str(res.exception)


def test_robots_are_installed_on_first_use(unimal_dir, tmp_path, monkeypatch):
    archive = tmp_path / "robots.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            for kind in ("xml", "metadata"):
                tar.add(unimal_dir / split / kind, arcname=f"repo/data/{split}/{kind}")
    target = tmp_path / "cache"
    monkeypatch.setenv("KDISTILL_UNIMAL_DIR", str(target))
    monkeypatch.setenv("KDISTILL_UNIMAL_URL", archive.as_uri())  # the same archive, read the same way as a download
    res = invoke("env", "check", "unimal", "--robots", SMALL, "--steps", "5", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"] == 1
    assert "installing the unimal data (first use)" in res.stderr and "404 files checked" in res.stderr
    marker = target / ".kdistill-unimal.json"
    assert json.loads(marker.read_text())["source"] == archive.as_uri()
    assert len(list((target / "train" / "xml").glob("*.xml"))) == 100
    stamp = marker.stat().st_mtime_ns
    archive.unlink()  # found now: nothing is installed again
    res = invoke("env", "check", "unimal", "--robots", SMALL, "--steps", "5", "--json")
    assert res.exit_code == 0 and "installing" not in res.stderr and marker.stat().st_mtime_ns == stamp


def _meta_run(run_dir):
    from kdistill.io import latest_checkpoint, read_json_object

    return read_json_object(latest_checkpoint(run_dir) / "meta.json")["run"]


def test_experts_train_on_a_robots_dir_and_resume_from_it(unimal_dir, no_robot_set, one_torch_thread):
    folder = flat_folder(unimal_dir, no_robot_set / "mine", [("train", SMALL), ("test", LARGE)])
    run = no_robot_set / "run"
    base = ["experts", "train", "unimal", "--out", str(run), "--threads", "1", "--json"]
    res = invoke(*base, "--robots-dir", str(folder), "--preset", "tiny", "--steps-per-task", "128")
    assert res.exit_code == 0, res.output
    assert [t["task"] for t in json.loads(res.stdout)["tasks"]] == [SMALL, LARGE]
    saved = _meta_run(run)
    assert saved["tasks_dir"] == str(folder.resolve()) and len(saved["tasks_dir_sha256"]) == 64

    # the run remembers its folder: a resume needs no --robots-dir (the shipped robots are not there either)
    res = invoke(*base, "--resume", "--steps-per-task", "256")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["env_steps"] == 2 * 256

    checkpoints = sorted(p.name for p in run.glob("ckpt-*"))
    meta_json = folder / f"{LARGE}.json"
    original = meta_json.read_bytes()
    meta_json.write_bytes(original.replace(b"}", b' , "note": 1}', 1))
    res = invoke(*base, "--resume", "--steps-per-task", "384")
    assert isinstance(res.exception, KdistillError) and "differ from those" in str(res.exception)
    meta_json.write_bytes(original)

    moved = folder.rename(no_robot_set / "moved")
    res = invoke(*base, "--resume", "--steps-per-task", "384")
    assert isinstance(res.exception, KdistillError) and "--tasks-dir with the folder's new place" in str(res.exception)
    res = invoke(*base, "--resume", "--steps-per-task", "384", "--split", "train")
    assert isinstance(res.exception, KdistillError)
    assert sorted(p.name for p in run.glob("ckpt-*")) == checkpoints  # nothing written by the refused calls
    res = invoke(*base, "--resume", "--steps-per-task", "384", "--robots-dir", str(moved))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["env_steps"] == 2 * 384 and _meta_run(run)["tasks_dir"] == str(moved.resolve())


def test_a_run_of_the_domains_tasks_refuses_a_robots_dir_on_resume(unimal_dir, tmp_path):
    from kdistill.resume import run_tasks

    folder = flat_folder(unimal_dir, tmp_path / "mine", [("train", SMALL)])
    domain = UnimalDomain(data_dir=str(unimal_dir))
    with pytest.raises(KdistillError, match="domain's own tasks"):
        run_tasks(domain, {"tasks": [SMALL]}, None, None, None, tmp_path / "run", tasks_dir=str(folder))
    picked = run_tasks(domain, {}, None, None, None, tmp_path / "run", tasks_dir=str(folder))
    assert picked.tasks == [SMALL] and picked.settings["tasks_dir"] == str(folder.resolve())
    assert run_tasks(domain, {}, SMALL, None, None, tmp_path / "run").settings == {"tasks_dir": "", "tasks_dir_sha256": ""}


def test_teacher_train_on_a_robots_dir_resumes_without_it(unimal_dir, no_robot_set, one_torch_thread):
    folder = flat_folder(unimal_dir, no_robot_set / "mine", [("train", SMALL)])
    run = no_robot_set / "teacher"
    base = ["teacher", "train", "unimal", "--out", str(run), "--threads", "1", "--json"]
    res = invoke(*base, "--robots-dir", str(folder), "--steps", "4096")
    assert res.exit_code == 0, res.output
    assert _meta_run(run)["tasks"] == [SMALL] and _meta_run(run)["tasks_dir"] == str(folder.resolve())
    res = invoke(*base, "--resume", "--steps", "8192")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["env_steps"] == 8192
