"""``kdistill unimal mutate``: seeded mutation operators whose every product is a valid robot."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from kdistill.cli.app import app
from kdistill.errors import KdistillError, UnknownNameError
from kdistill_unimal.domain import UnimalDomain
from kdistill_unimal.mutate import OPERATORS, Genome, Rejected, grow_limb, mutate_robot

SMALL = "floor-5506-3-10-01-14-19-06"  # 4 limbs, 7 dof
MEDIAN = "floor-1409-0-12-01-12-30-07"  # 8 limbs, 11 dof


def paths(unimal_dir, name, split="train"):
    return unimal_dir / split / "xml" / f"{name}.xml", unimal_dir / split / "metadata" / f"{name}.json"


def test_every_operator_makes_a_valid_robot(unimal_dir, tmp_path):
    records = mutate_robot(*paths(unimal_dir, MEDIAN), MEDIAN, len(OPERATORS), seed=0, out=tmp_path, steps=1000)
    assert [r["operator"] for r in records] == list(OPERATORS)
    parent = json.loads(paths(unimal_dir, MEDIAN)[1].read_text())
    for r in records:
        assert r["name"] == f"{MEDIAN}--{OPERATORS.index(r['operator'])}-{r['operator']}"
        meta = json.loads((tmp_path / "metadata" / f"{r['name']}.json").read_text())
        assert meta["mutation"]["operator"] == r["operator"] and meta["mutation"]["parent"] == MEDIAN
        assert (meta["num_limbs"], meta["dof"]) == (r["num_limbs"], r["dof"]) == (r["check"]["limbs"], r["check"]["dof"])
        assert r["check"]["steps"] == 1000 and r["check"]["unstable"] == 0 and r["num_limbs"] + 1 <= 12
    by_op = {r["operator"]: r for r in records}
    assert by_op["grow-limb"]["num_limbs"] == parent["num_limbs"] + 1
    assert by_op["delete-limb"]["num_limbs"] < parent["num_limbs"]
    assert abs(by_op["dof"]["dof"] - parent["dof"]) == 1
    assert by_op["gear"]["change"]["from"] != by_op["gear"]["change"]["to"]
    assert by_op["joint-range"]["change"]["from"] != by_op["joint-range"]["change"]["to"]
    assert by_op["density"]["change"]["to"] != by_op["density"]["change"]["from"]
    assert by_op["limb-size"]["change"]["length_to"] != by_op["limb-size"]["change"]["length_from"]
    # the folder is a task set: every product loads through --robots-dir and changes the robot's context
    domain = UnimalDomain(data_dir=unimal_dir)
    names = domain.add_task_folder(tmp_path)
    assert sorted(names) == sorted(r["name"] for r in records)
    base = domain.context(MEDIAN).tokens
    for name in names:
        if not name.endswith("density") and not name.endswith("limb-size"):
            assert not np.array_equal(domain.context(name).tokens, base), name


def test_seeded_and_independent_of_the_other_robots(unimal_dir, tmp_path):
    a = mutate_robot(*paths(unimal_dir, SMALL), SMALL, 3, seed=7, out=tmp_path / "a", steps=100)
    b = mutate_robot(*paths(unimal_dir, SMALL), SMALL, 3, seed=7, out=tmp_path / "b", steps=100)
    c = mutate_robot(*paths(unimal_dir, SMALL), SMALL, 3, seed=8, out=tmp_path / "c", steps=100)
    assert [r["name"] for r in a] == [r["name"] for r in b]
    for r in a:
        assert (tmp_path / "a" / "xml" / f"{r['name']}.xml").read_bytes() == (tmp_path / "b" / "xml" / f"{r['name']}.xml").read_bytes()
    assert [(r["name"], r["change"]) for r in a] != [(r["name"], r["change"]) for r in c]


def test_grow_limb_keeps_to_twelve_bodies(unimal_dir):
    root = ET.parse(paths(unimal_dir, SMALL)[0]).getroot()
    g = Genome(root, json.loads(paths(unimal_dir, SMALL)[1].read_text()))
    rng = np.random.default_rng(0)
    while len(g.limbs()) < 11:
        grow_limb(g, rng)
    with pytest.raises(Rejected, match="12 bodies"):
        grow_limb(g, rng)


def test_mutate_command(unimal_dir, tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    for f in paths(unimal_dir, SMALL):
        shutil.copy(f, src / f.name)
    out = tmp_path / "mutants"
    args = ["unimal", "mutate", "--from", str(src), "--per-robot", "2", "--seed", "3", "--out", str(out),
            "--operators", "gear,joint-range", "--steps", "200", "--data-dir", str(unimal_dir)]
    res = CliRunner().invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["parents"] == [SMALL] and [r["operator"] for r in doc["robots"]] == ["gear", "joint-range"]
    assert json.loads((out / "mutations.json").read_text()) == doc
    res = CliRunner().invoke(app, ["env", "check", "unimal", "--robots-dir", str(out), "--steps", "50", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["passed"] == 2
    # a split works too, selected with the generic commands' --tasks as well; bad input is one line
    res = CliRunner().invoke(app, ["unimal", "mutate", "--from", "train", "--tasks", MEDIAN, "--out", str(tmp_path / "m2"),
                                   "--operators", "gear", "--per-robot", "1", "--steps", "50", "--data-dir", str(unimal_dir),
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["parents"] == [MEDIAN]
    res = CliRunner().invoke(app, args[:-2] + ["--operators", "shrink"])
    assert isinstance(res.exception, UnknownNameError) and "grow-limb" in str(res.exception)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, args[:6] + ["--out", str(tmp_path / "theirs"), "--data-dir", str(unimal_dir)])
    assert isinstance(res.exception, KdistillError) and "already holds files" in str(res.exception)
