"""A command deletes or overwrites only what it wrote itself, and checks its inputs before touching anything."""

from __future__ import annotations

import json

from conftest import assert_one_line_error
from kdistill.io import OWNER_FILE, load_run_checkpoint


def test_data_fetch_keeps_a_folder_that_is_not_a_robot_install(cli, tmp_path, unimal_dir):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    res = cli("data", "fetch", "unimal", "--from", unimal_dir, "--data-dir", target)
    assert_one_line_error(res, str(target), "did not install")
    assert (target / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left behind


def test_data_fetch_refuses_a_file_as_data_dir(cli, tmp_path, unimal_dir):
    target = tmp_path / "robots"
    target.write_text("not a folder")
    res = cli("data", "fetch", "unimal", "--from", unimal_dir, "--data-dir", target)
    assert res.code == 2 and target.read_text() == "not a folder"


def test_demo_fresh_with_a_misspelled_domain_deletes_nothing(cli, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = cli("demo", "cartpol", "--fresh", "--out", out)
    assert_one_line_error(res, "cartpol", "cartpole")
    assert (out / "keep.txt").read_text() == "precious"


def test_demo_fresh_deletes_only_a_demo_folder(cli, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = cli("demo", "cartpole", "--fresh", "--out", out, "--json")
    assert_one_line_error(res, str(out), "not a folder written by `kdistill demo`", as_json=True)
    assert (out / "keep.txt").read_text() == "precious"
    # without --fresh the demo does not write into someone else's folder either
    res = cli("demo", "cartpole", "--out", out)
    assert_one_line_error(res, str(out), "not kdistill demo")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_demo_fresh_checks_its_options_before_deleting(cli, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = cli("demo", "cartpole", "--fresh", "--out", out, "--epochs", "0")
    assert_one_line_error(res, "--epochs")
    assert (out / "keep.txt").exists()


def test_export_never_overwrites_an_unrelated_file(cli, pipeline, tmp_path):
    for name in ("notes.json", "notes.safetensors"):
        target = tmp_path / name
        target.write_text("my notes")
        res = cli("export", "cartpole", "--student", pipeline["student"], "--task", "train-00", "--out", target)
        assert_one_line_error(res, str(target), "not a kdistill export")
        assert target.read_text() == "my notes"
        target.unlink()


def test_export_overwrites_its_own_export(cli, pipeline, copy_of):
    stem = copy_of(pipeline["export"].with_suffix(".json")).with_suffix("")
    stem.with_suffix(".safetensors").write_bytes(pipeline["export"].with_suffix(".safetensors").read_bytes())
    res = cli("export", "cartpole", "--student", pipeline["student"], "--task", "train-01", "--out", stem, "--json")
    assert res.code == 0, res.err
    assert json.loads(stem.with_suffix(".json").read_text())["task"] == "train-01"


def test_export_out_below_a_file_is_one_line(cli, pipeline, tmp_path):
    (tmp_path / "afile").write_text("x")
    res = cli("export", "cartpole", "--student", pipeline["student"], "--task", "train-00",
              "--out", tmp_path / "afile" / "policy")
    assert_one_line_error(res, "is a file")
    res = cli("export", "cartpole", "--student", pipeline["student"], "--task", "train-00", "--out", tmp_path)
    assert res.code == 2 and "Traceback" not in res.err


def test_expert_collect_into_a_teacher_run_leaves_the_teacher_loadable(cli, pipeline, copy_of):
    teacher = copy_of(pipeline["teacher"])
    for marked in (True, False):  # a run written before folders were marked is protected as well
        if not marked:
            (teacher / OWNER_FILE).unlink()
        before = sorted(p.name for p in teacher.iterdir())
        res = cli("expert", "collect", "cartpole", "--teacher", teacher, "--num-tasks", "1", "--samples-per-task",
                  "16", "--envs", "2", "--out", teacher)
        assert_one_line_error(res, str(teacher), "teacher run" if marked else "not kdistill expert data")
        assert sorted(p.name for p in teacher.iterdir()) == before
        _, meta = load_run_checkpoint(teacher, as_torch=False)
        assert meta["kind"] == "teacher"


def test_run_folders_are_marked_and_kinds_are_not_mixed(cli, pipeline, copy_of):
    for kind, name in (("teacher-run", "teacher"), ("expert-data", "expert"), ("student-run", "student")):
        assert json.loads((pipeline[name] / OWNER_FILE).read_text())["kind"] == kind
    student = copy_of(pipeline["student"])
    res = cli("teacher", "train", "cartpole", "--num-tasks", "1", "--steps", "4096", "--out", student)
    assert_one_line_error(res, str(student), "student run")
