"""The evaluation protocol, policies of any kind, and the ``eval`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdistill.domain import Layout
from kdistill.evaluate import comparison_markdown, evaluate_policy, play_episodes
from kdistill.policy import Policy
from test_ppo import make_trainer, toy, trained_run  # noqa: F401  (toy is a fixture)
from test_teacher import _cli


class ConstantPolicy(Policy):
    """Acts with a fixed action; records prepare() calls the way a student would use them."""

    kind = "test"

    def __init__(self, layout: Layout, value: float):
        self.layout, self.value, self.meta, self.calls = layout, value, {}, []

    def prepare(self, task, context):
        self.calls.append(("prepare", task, context.tokens.copy()))

    def act(self, obs, deterministic=True):
        self.calls.append(("act", obs["obs"].shape[0]))
        return np.full((obs["obs"].shape[0], self.layout.num_actions), self.value, np.float32)


def _manual_return(domain, task, seed, action):
    env = domain.make_env(task)
    env.reset(seed=seed)
    total, done, steps = 0.0, False, 0
    while not done:
        _, r, term, trunc, _ = env.step(np.full(domain.layout.num_actions, action, np.float32))
        total, done, steps = total + r, term or trunc, steps + 1
    return total, steps


def test_each_env_plays_exactly_one_episode_from_its_seed(toy):
    envs = [toy.make_env("far") for _ in range(3)]
    seeds = [11, 12, 13]
    batch_sizes = []

    def act(obs):
        batch_sizes.append(obs["obs"].shape[0])
        return np.ones((obs["obs"].shape[0], 3), np.float32)

    returns, lengths = play_episodes(envs, seeds, act)
    for s, ret, length in zip(seeds, returns, lengths):
        exp_ret, exp_len = _manual_return(toy, "far", s, 1.0)
        assert ret == pytest.approx(exp_ret) and length == exp_len
    # the batch shrinks as episodes end and nobody plays a second episode
    assert batch_sizes[0] == 3 and len(batch_sizes) == max(lengths)


def test_evaluate_policy_means_over_episodes_then_tasks(toy):
    policy = ConstantPolicy(toy.layout, 0.5)
    tasks = ["two", "one"]
    result = evaluate_policy(toy, policy, tasks, episodes=3, seed=4)
    per_task = []
    for k, task in enumerate(tasks):
        seeds = [int(s) for s in np.random.SeedSequence([4, k]).generate_state(3)]
        expected = [_manual_return(toy, task, s, 0.5)[0] for s in seeds]
        row = result["tasks"][k]
        assert row["name"] == task
        np.testing.assert_allclose(row["returns"], expected)
        assert row["mean"] == pytest.approx(np.mean(expected))
        per_task.append(np.mean(expected))
        # the random row plays the same starts with other actions
        assert len(row["random_returns"]) == 3 and row["random_mean"] != pytest.approx(row["mean"])
    assert result["summary"]["mean_return"] == pytest.approx(np.mean(per_task))
    assert result["summary"]["random_mean_return"] == pytest.approx(np.mean([r["random_mean"] for r in result["tasks"]]))
    # prepare comes once per task, before that task's actions, with the task's context
    prepares = [(i, c) for i, c in enumerate(policy.calls) if c[0] == "prepare"]
    assert [c[1] for _, c in prepares] == tasks
    np.testing.assert_array_equal(prepares[1][1][2], toy.context("one").tokens)
    assert policy.calls[prepares[0][0] + 1][0] == "act"


def test_random_baseline_acts_uniformly_in_the_action_box(toy):
    class Recorder:
        def __init__(self, inner):
            self.inner, self.actions = inner, []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def make_env(self, task):
            env = self.inner.make_env(task)
            step = env.step

            def record(a):
                self.actions.append(np.array(a))
                return step(a)

            env.step = record
            return env

    domain = Recorder(toy)
    evaluate_policy(domain, ConstantPolicy(toy.layout, 0.0), ["three"], episodes=2)
    random_actions = np.concatenate([a for a in domain.actions if np.any(a != 0.0)])
    assert random_actions.min() >= -1.0 and random_actions.max() <= 1.0
    assert random_actions.min() < -0.9 and random_actions.max() > 0.9 and abs(random_actions.mean()) < 0.1


def test_layout_mismatch_is_a_clear_error(toy):
    from kdistill.errors import CheckpointError

    other = Layout(max_tokens=5, obs_features=4, student_features=(0,), context_features=2, actions_per_token=1)
    with pytest.raises(CheckpointError, match="layout"):
        evaluate_policy(toy, ConstantPolicy(other, 0.0), ["two"], episodes=1)


def test_eval_command_json_table_and_chart(tmp_path, monkeypatch, capsys, toy):
    trained_run(toy, tmp_path / "run", iterations=1)
    code, out, err = _cli(["eval", "toy", "--policy", str(tmp_path / "run"), "--split", "all", "--episodes", "2",
                           "--json", "--out", str(tmp_path / "ev")], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [r["name"] for r in result["tasks"]] == toy.tasks("all")
    assert all(len(r["returns"]) == 2 and "random_mean" in r for r in result["tasks"])
    assert result["summary"]["mean_return"] == pytest.approx(np.mean([r["mean"] for r in result["tasks"]]))
    assert "random_mean_return" in result["summary"] and result["policy"]["kind"] == "teacher"
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["summary"] == result["summary"]
    assert (tmp_path / "ev" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = _cli(["eval", "toy", "--policy", str(tmp_path / "run"), "--robots", "two", "--episodes", "1"],
                          monkeypatch, capsys)
    assert code == 0 and "mean over tasks" in out and "two" in out
    code, out, err = _cli(["eval", "toy", "--policy", str(tmp_path / "nothing"), "--episodes", "1"], monkeypatch, capsys)
    assert code == 2 and "does not exist" in err


def test_result_folders_hold_only_what_kdistill_wrote(tmp_path, monkeypatch, capsys, toy):
    """eval and compare --out write into a new folder, their own, or an unmarked one holding only their files;
    a folder with anything else, or another command's results, is refused before any evaluation and left as it was."""
    trained_run(toy, tmp_path / "run", iterations=1)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "eval.json").write_text('{"precious": true}')
    (mine / "notes.txt").write_text("mine")
    args = ["--split", "all", "--episodes", "1", "--no-random", "--json"]
    code, _, err = _cli(["eval", "toy", "--policy", str(tmp_path / "run"), *args, "--out", str(mine)], monkeypatch, capsys)
    assert code == 2 and "not kdistill" in err and len(err.strip().splitlines()) == 1
    assert (mine / "eval.json").read_text() == '{"precious": true}' and sorted(p.name for p in mine.iterdir()) == [
        "eval.json", "notes.txt"]
    # an earlier eval's folder (unmarked) is taken and rewritten; it then belongs to eval, not to compare
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "eval.json").write_text("{}")
    code, out, err = _cli(["eval", "toy", "--policy", str(tmp_path / "run"), *args, "--out", str(earlier)], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((earlier / "eval.json").read_text())["summary"] == json.loads(out)["summary"]
    code, _, err = _cli(["compare", "toy", "--policies", f"a={tmp_path / 'run'}", *args, "--out", str(earlier)],
                        monkeypatch, capsys)
    assert code == 2 and "holds a kdistill eval" in err
    code, _, err = _cli(["compare", "toy", "--policies", f"a={tmp_path / 'run'}", *args, "--out", str(tmp_path / "cmp")],
                        monkeypatch, capsys)
    assert code == 0 and (tmp_path / "cmp" / "compare.json").exists(), err
    # named tasks are one group, as in eval; with --split as well, one line
    code, out, err = _cli(["compare", "toy", "--policies", f"a={tmp_path / 'run'}", "--tasks", "two,three", "--episodes",
                           "1", "--no-random", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["tasks"] == {"tasks": ["two", "three"]}
    code, _, err = _cli(["compare", "toy", "--policies", f"a={tmp_path / 'run'}", "--tasks", "two", "--split", "train"],
                        monkeypatch, capsys)
    assert code == 2 and "either --tasks" in err
    # a bad executor is refused before the folder exists
    code, _, err = _cli(["eval", "toy", "--policy", str(tmp_path / "run"), *args, "--executor", "nope",
                         "--out", str(tmp_path / "never")], monkeypatch, capsys)
    assert code == 2 and not (tmp_path / "never").exists()


def test_comparison_markdown_lists_means_fractions_and_every_task():
    result = {"domain": "toy", "episodes": 4, "deterministic": True, "tasks": {"train": ["a", "b"], "test": ["c"]},
              "returns": {"train": {"teacher": 100.0, "random": 1.0, "hnmlp": 95.0},
                          "test": {"teacher": 50.0, "random": -2.0, "hnmlp": None}},
              "per_task": {"train": {"a": {"teacher": 150.0, "random": 0.0, "hnmlp": 140.0},
                                     "b": {"teacher": 50.0, "random": 2.0, "hnmlp": 50.0}},
                           "test": {"c": {"teacher": 50.0, "random": -2.0}}},
              "fraction_of_teacher": {"train": {"hnmlp": 0.95}, "test": {"hnmlp": None}}}
    lines = comparison_markdown(result).splitlines()
    assert "| policy | train (2) | train / teacher | test (1) | test / teacher |" in lines
    assert "| hnmlp | 95 | 0.95x | - | - |" in lines
    assert "| teacher | 100 | - | 50 | - |" in lines
    assert lines.index("| hnmlp | 95 | 0.95x | - | - |") < lines.index("| random | 1 | - | -2 | - |")
    assert "| a | 150 | 140 | 0 |" in lines and "| b | 50 | 50 | 2 |" in lines and "| c | 50 | - | -2 |" in lines
    result["per_task"]["test"] = {"dir|c": {"teacher": 50.0}}
    assert "| dir\\|c | 50 | - | - |" in comparison_markdown(result).splitlines()
