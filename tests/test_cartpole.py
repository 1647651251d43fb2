"""The cart-pole domain: task generation, physics, the env contract, the vector env, the teacher, registration."""

from __future__ import annotations

import ast
import math
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from kdistill import KdistillError
from kdistill.rl.sampling import BalancedSampler, FixedProbsSampler
from kdistill_cartpole.domain import DEMO_DEFAULTS, CartPoleConfig, CartPoleDomain
from kdistill_cartpole.env import ENV_ID
from kdistill_cartpole.physics import PARAM_NAMES, CartPoleParams, Dynamics, ParamRanges, make_task_params, reward_and_failure, step_one, step_state
from kdistill_cartpole.teacher import CONTEXT_MLP, ContextMLPConfig, build_context_mlp

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def domain() -> CartPoleDomain:
    return CartPoleDomain()


# tasks and contexts ----------------------------------------------------------------------------------------

def test_splits_are_fixed_disjoint_and_sign_balanced(domain):
    splits = domain.splits()
    assert len(splits["train"]) == 32 and len(splits["test"]) == 16
    assert not set(splits["train"]) & set(splits["test"])
    again = CartPoleDomain()
    for task in splits["train"] + splits["test"]:
        assert domain.params[task] == again.params[task]  # fixed seeds: the same tasks every time
    for split, names in splits.items():
        signs = [domain.params[t].sign for t in names]
        assert signs.count(-1.0) == len(names) // 2, split
    lo, hi = ParamRanges().bounds()
    for p in domain.params.values():
        assert np.all(p.as_array()[:-1] >= lo) and np.all(p.as_array()[:-1] <= hi)
    train = {tuple(domain.params[t].as_array()) for t in splits["train"]}
    assert not train & {tuple(domain.params[t].as_array()) for t in splits["test"]}


def test_task_params_depend_on_the_seed_only():
    ranges = ParamRanges()
    assert make_task_params(6, 3, ranges) == make_task_params(6, 3, ranges)
    assert make_task_params(6, 3, ranges) != make_task_params(6, 4, ranges)


def test_context_is_the_normalised_parameter_vector(domain):
    ranges = domain.config.ranges
    for task in ("train-00", "test-05"):
        p = domain.params[task]
        expected = [2 * (getattr(p, k) - getattr(ranges, k)[0]) / (getattr(ranges, k)[1] - getattr(ranges, k)[0]) - 1
                    for k in PARAM_NAMES[:-1]] + [p.sign]
        ctx = domain.context(task)
        assert ctx.tokens.shape == (1, 6) and ctx.tokens.dtype == np.float32
        np.testing.assert_allclose(ctx.tokens[0], expected, rtol=1e-6, atol=1e-6)
        assert not ctx.mask.any() and not ctx.act_mask.any() and ctx.act_mask.shape == (1,)
    corners = np.array([[0.3, 0.05, 0.5, 7.0, 0.6, -1.0], [0.9, 0.3, 1.5, 13.0, 1.4, 1.0]])
    np.testing.assert_allclose(ranges.normalise(corners), [[-1, -1, -1, -1, -1, -1], [1, 1, 1, 1, 1, 1]], atol=1e-6)


def test_unknown_task_and_bad_configs_fail_with_one_clear_line(domain):
    with pytest.raises(KdistillError, match="unknown cartpole task 'train-99'"):
        domain.context("train-99")
    with pytest.raises(KdistillError, match="unknown cartpole config preset"):
        CartPoleDomain(config="huge")
    with pytest.raises(ValueError, match="must differ"):
        CartPoleConfig(train_seed=1, test_seed=1)
    with pytest.raises(ValueError, match="sign must be"):
        CartPoleParams(0.5, 0.1, 1.0, 9.8, 1.0, sign=0.0)
    with pytest.raises(ValueError, match="0 < low <= high"):
        ParamRanges(gain=(1.5, 0.5))
    with pytest.raises(ValueError, match="'dt' must be > 0"):
        Dynamics(dt=0.0)


def test_small_preset_and_custom_config():
    small = CartPoleDomain(config="small")
    assert {k: len(v) for k, v in small.splits().items()} == {"train": 8, "test": 4}
    custom = CartPoleDomain(config=CartPoleConfig(num_train=2, num_test=0, dynamics=Dynamics(episode_steps=5)))
    env = custom.make_env("train-01")
    env.reset(seed=0)
    steps = 0
    while True:
        _, _, term, trunc, _ = env.step(np.zeros(1, np.float32))
        steps += 1
        if term or trunc:
            break
    assert steps == 5 and trunc and not term


# physics ----------------------------------------------------------------------------------------------------

def _params_row(p: CartPoleParams) -> np.ndarray:
    return p.as_array()[None]


def test_push_from_rest_matches_the_lagrangian():
    """At theta = 0 and rest, the Lagrangian gives x_acc = F / (M - 3 m / 4) and theta_acc = -3 x_acc / (4 l)."""
    dyn = Dynamics(dt=1e-4, substeps=1)
    for sign, gain in ((1.0, 1.0), (-1.0, 0.7)):
        p = CartPoleParams(0.5, 0.2, 1.0, 9.8, gain, sign)
        state = step_state(np.zeros((1, 4)), np.array([0.5]), _params_row(p), dyn)
        force = sign * gain * dyn.force_max * 0.5
        x_acc = force / (p.cart_mass + p.pole_mass - 0.75 * p.pole_mass)
        theta_acc = -3.0 * x_acc / (4.0 * p.half_length)
        np.testing.assert_allclose(state[0, 1] / dyn.dt, x_acc, rtol=1e-6)
        np.testing.assert_allclose(state[0, 3] / dyn.dt, theta_acc, rtol=1e-6)
        assert np.sign(state[0, 1]) == sign  # the actuator sign decides which way the cart goes


def test_unforced_motion_conserves_momentum_and_energy():
    p = CartPoleParams(0.6, 0.25, 0.8, 9.8, 1.0, 1.0)
    dyn = Dynamics(dt=0.001, substeps=4)
    m, M, l, g = p.pole_mass, p.pole_mass + p.cart_mass, p.half_length, p.gravity  # noqa: E741 (the physics' names)

    def momentum(s):
        return M * s[1] + m * l * s[3] * math.cos(s[2])

    def energy(s):  # uniform rod: inertia about its centre m l^2 / 3
        x_dot, theta, theta_dot = s[1], s[2], s[3]
        kinetic = 0.5 * M * x_dot**2 + m * l * x_dot * theta_dot * math.cos(theta) + 0.5 * (4.0 / 3.0) * m * l**2 * theta_dot**2
        return kinetic + m * g * l * math.cos(theta)

    state = np.array([[0.0, 0.3, 0.4, -0.5]])
    start = state[0].copy()
    for _ in range(500):  # 0.5 s, the pole swings well past the start angle
        state = step_state(state, np.zeros(1), _params_row(p), dyn)
    assert abs(state[0, 2] - start[2]) > 0.1
    assert momentum(state[0]) == pytest.approx(momentum(start), rel=2e-3)  # exact in continuous time
    assert energy(state[0]) == pytest.approx(energy(start), rel=2e-3)


def test_scalar_and_batched_steps_agree():
    rng = np.random.default_rng(0)
    dyn = Dynamics()
    params = make_task_params(16, 11, ParamRanges())
    states = rng.uniform(-0.3, 0.3, (16, 4))
    actions = rng.uniform(-2, 2, 16)
    batched = step_state(states, actions, np.stack([p.as_array() for p in params]), dyn)
    rewards, failed, _ = reward_and_failure(batched, actions, dyn)
    for i, p in enumerate(params):
        s, r, f, u = step_one(tuple(states[i]), actions[i], p, dyn)
        np.testing.assert_allclose(s, batched[i], rtol=1e-12, atol=1e-12)
        assert r == pytest.approx(rewards[i], abs=1e-12) and f == failed[i] and not u


def test_reward_prefers_upright_centred_and_idle():
    dyn = Dynamics()
    states = np.array([[0, 0, 0, 0], [0, 0, 0.2, 0], [1.5, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0.35, 0], [3.0, 0, 0, 0]], float)
    actions = np.array([0, 0, 0, 1.0, 0, 0])
    reward, failed, unstable = reward_and_failure(states, actions, dyn)
    assert reward[0] == pytest.approx(1.0)
    assert reward[0] > reward[1] > 0 and reward[0] > reward[2] > 0 and reward[3] == pytest.approx(0.9)
    assert failed.tolist() == [False, False, False, False, True, True] and not unstable.any()


# the gymnasium env ---------------------------------------------------------------------------------------------

def test_env_follows_the_observation_contract(domain):
    from gymnasium.utils.env_checker import check_env

    register_params = domain.params["test-02"].to_dict()
    env = gym.make(ENV_ID, params=register_params, task="test-02")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unbounded state space and the missing render modes are expected
        check_env(env.unwrapped)
    obs, info = env.reset(seed=3)
    assert info["task"] == "test-02"
    assert obs["obs"].shape == (1, 4) and obs["obs"].dtype == np.float32
    assert obs["obs_mask"].shape == (1,) and obs["obs_mask"].dtype == bool and not obs["obs_mask"].any()
    assert obs["act_mask"].shape == (1,) and not obs["act_mask"].any()
    np.testing.assert_array_equal(obs["context"], domain.context("test-02").tokens)
    assert np.all(np.abs(obs["obs"]) <= Dynamics().init_noise)
    same, _ = gym.make(ENV_ID, params=register_params, task="test-02").reset(seed=3)
    np.testing.assert_array_equal(same["obs"], obs["obs"])


def test_env_reports_instability_and_never_returns_nan(domain):
    env = domain.make_env("train-00")
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.array([np.nan], np.float32))
    assert info.get("unstable") is True and terminated and not truncated and reward == 0.0
    assert np.isfinite(obs["obs"]).all()


def test_the_actuator_sign_decides_which_way_a_push_tips_the_pole(domain):
    """The same action tips poles of opposite sign opposite ways, so no context-blind policy suits both."""
    effects = {}
    for sign in (1.0, -1.0):
        task = next(t for t in domain.tasks("train") if domain.params[t].sign == sign)
        leans = []
        for action in (1.0, 0.0):
            env = domain.make_env(task)
            obs, _ = env.reset(seed=0)
            for _ in range(5):
                obs, *_ = env.step(np.array([action], np.float32))
            leans.append(obs["obs"][0, 2])
        effects[sign] = leans[0] - leans[1]  # lean caused by the push, relative to doing nothing
    assert effects[1.0] < 0 < effects[-1.0]


# the vector env ---------------------------------------------------------------------------------------------

def test_vec_env_contract_auto_reset_and_episode_info(domain):
    tasks = domain.tasks("train")[:3]
    venv = domain.make_vec_env(tasks, 8, seed=1)
    obs = venv.reset(seed=5)
    assert obs["obs"].shape == (8, 1, 4) and obs["context"].shape == (8, 1, 6)
    assert obs["obs_mask"].shape == (8, 1) and obs["act_mask"].shape == (8, 1)
    totals = np.zeros(8)
    finished = []
    for _ in range(250):
        tasks_before = venv.slot_tasks
        obs, rewards, terminated, truncated, infos = venv.step(np.full((8, 1), 0.3, np.float32))
        totals += rewards
        assert rewards.dtype == np.float32 and not (terminated & truncated).any()
        for i, info in enumerate(infos):
            assert info["task"] == tasks_before[i]
            if terminated[i] or truncated[i]:
                ep = info["episode"]
                assert ep["task"] == tasks_before[i] and ep["return"] == pytest.approx(totals[i], abs=1e-4)
                assert np.all(np.abs(obs["obs"][i]) <= Dynamics().init_noise)  # already the next episode's start
                np.testing.assert_array_equal(obs["context"][i], domain.context(venv.slot_tasks[i]).tokens)
                finished.append(ep)
                totals[i] = 0.0
            else:
                assert "episode" not in info
    assert finished and all(ep["length"] <= 200 for ep in finished)



def test_every_vector_env_reports_its_slots_tasks(domain):
    from kdistill.rl.vec import SubprocVecEnv, SyncVecEnv

    tasks = domain.tasks("train")[:3]
    for venv in (SubprocVecEnv.from_domain(domain, tasks, 6, workers=2, seed=1),
                 SyncVecEnv.from_domain(domain, tasks, 4, seed=1)):
        with venv:
            obs, seen = venv.reset(seed=3), set()
            for _ in range(120):  # episodes end and slots draw new tasks
                slots = venv.slot_tasks
                assert len(slots) == venv.num_envs and set(slots) <= set(tasks)
                seen.update(slots)
                for i, task in enumerate(slots):
                    np.testing.assert_array_equal(obs["context"][i], domain.context(task).tokens)
                obs = venv.step(np.full((venv.num_envs, 1), 0.8, np.float32))[0]
            assert seen == set(tasks)

def test_vec_env_is_deterministic_and_matches_the_single_env(domain):
    tasks = domain.tasks("test")
    a, b = domain.make_vec_env(tasks, 4, seed=0), domain.make_vec_env(tasks, 4, seed=0)
    oa, ob = a.reset(seed=9), b.reset(seed=9)
    rng = np.random.default_rng(0)
    for _ in range(300):
        act = rng.uniform(-1, 1, (4, 1)).astype(np.float32)
        oa, ra, *_ = a.step(act)
        ob, rb, *_ = b.step(act)
        np.testing.assert_array_equal(oa["obs"], ob["obs"])
        np.testing.assert_array_equal(ra, rb)
    # one slot, replayed in the single env from the same start state
    venv = domain.make_vec_env(["test-04"], 1, seed=2)
    start = venv.reset(seed=2)["obs"][0, 0].astype(np.float64)
    env = domain.make_env("test-04")
    env.reset(seed=0)
    env._state = tuple(venv._state[0])
    for t in range(50):
        act = np.array([math.sin(t / 5)], np.float32)
        vo, vr, vterm, _, _ = venv.step(act[None])
        eo, er, eterm, _, _ = env.step(act)
        if vterm[0]:
            assert eterm
            break
        np.testing.assert_allclose(vo["obs"][0], eo["obs"], rtol=1e-6, atol=1e-7)
        assert vr[0] == pytest.approx(er, abs=1e-6)
    assert np.abs(start).max() <= Dynamics().init_noise


def test_vec_env_draws_tasks_from_the_sampler(domain):
    tasks = domain.tasks("train")[:4]
    only_third = FixedProbsSampler(tasks, [0, 0, 1, 0])
    venv = domain.make_vec_env(tasks, 6, seed=0, sampler=only_third)
    venv.reset(seed=0)
    assert venv.slot_tasks == [tasks[2]] * 6
    balanced = BalancedSampler(tasks)
    venv = domain.make_vec_env(tasks, 64, seed=0, sampler=balanced)
    venv.reset(seed=0)
    assert set(venv.slot_tasks) == set(tasks)
    with pytest.raises(ValueError, match="other tasks"):
        domain.make_vec_env(tasks[:2], 2, sampler=only_third)


# the teacher ------------------------------------------------------------------------------------------------

def _batch(domain, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    venv = domain.make_vec_env(domain.tasks("train"), n, seed=seed)
    return {k: torch.from_numpy(v) for k, v in venv.reset(seed=seed).items()}


@pytest.mark.parametrize("preset", sorted(ContextMLPConfig.presets()))
def test_teacher_presets_follow_the_actor_critic_contract(domain, preset):
    config = ContextMLPConfig.presets()[preset]
    torch.manual_seed(0)
    model = CONTEXT_MLP.build(domain.layout, config)
    obs = _batch(domain, 8)
    mu, value = model(obs)
    assert mu.shape == (8, 1) and value.shape == (8,)
    torch.testing.assert_close(model.mu(obs), mu)
    torch.testing.assert_close(model.value(obs), value)
    assert model.action_std == config.action_std
    assert ContextMLPConfig(**config.to_dict()) == config  # what a checkpoint's meta.json stores rebuilds it


def test_teacher_reads_the_context_and_film_starts_as_the_plain_mlp(domain):
    torch.manual_seed(0)
    film = build_context_mlp(domain.layout, ContextMLPConfig(conditioning="film", actor_out_gain=1.0))
    torch.manual_seed(0)
    concat = build_context_mlp(domain.layout, ContextMLPConfig(conditioning="concat", actor_out_gain=1.0))
    obs = _batch(domain, 16)
    concat.load_state_dict({k: v for k, v in film.state_dict().items() if ".film." not in k})
    torch.testing.assert_close(film(obs)[0], concat(obs)[0])  # zero-initialised FiLM: scale 1, shift 0
    flipped = dict(obs, context=obs["context"].clone())
    flipped["context"][..., -1] *= -1
    assert not torch.allclose(film(obs)[0], film(flipped)[0])
    with torch.no_grad():  # make the FiLM branch active: now the sign changes each layer multiplicatively
        film.actor.film[-1].weight.normal_()
    assert not torch.allclose(film(obs)[0], concat(obs)[0])


def test_teacher_config_validation():
    with pytest.raises(ValueError, match="hidden"):
        ContextMLPConfig(hidden=())
    with pytest.raises(ValueError):
        ContextMLPConfig(activation="gelu6")
    with pytest.raises(ValueError, match="action_std"):
        ContextMLPConfig(action_std=0)


# registration and layering --------------------------------------------------------------------------------------

def test_domain_and_teacher_are_registered_through_the_entry_point():
    from kdistill.plugins import Plugins

    plugins = Plugins().load()
    assert plugins.domains.entry("cartpole").plugin == "cartpole"
    assert plugins.teachers.entry("context-mlp").plugin == "cartpole"
    assert "entry point cartpole = kdistill_cartpole.plugin" in plugins.info["cartpole"].source
    built = plugins.domains.get("cartpole")(data_dir=None)
    assert built.layout.context_kind == "vector" and built.layout.max_tokens == 1
    from kdistill.teachers.lookup import domain_teachers

    assert built.default_teacher in domain_teachers(built)


def test_the_core_never_names_this_domain_and_the_domain_uses_only_public_kdistill():
    for path in (ROOT / "kdistill").rglob("*.py"):
        assert "cartpole" not in path.read_text().lower(), path
    public = {"kdistill", "kdistill.errors", "kdistill.rl.sampling", "kdistill.rl.vec"}
    for path in (ROOT / "domains" / "cartpole").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("kdistill_unimal"), (path, name)
                if name.split(".")[0] == "kdistill":
                    assert name in public, (path, name)


def test_demo_defaults_are_complete(domain):
    d = domain.demo_defaults()
    assert d == DEMO_DEFAULTS and d is not DEMO_DEFAULTS
    from kdistill.teachers.lookup import domain_teachers

    assert d["teacher"] in domain_teachers(domain) and d["teacher_preset"] in ContextMLPConfig.presets()
    from kdistill.distill.students import STUDENTS
    from kdistill.distill.training import DistillConfig
    from kdistill.rl.ppo import PPOConfig

    assert d["ppo_preset"] in PPOConfig.presets() and d["distill_preset"] in DistillConfig.presets()
    assert d["student"] in STUDENTS and d["blind_student"] in STUDENTS
    assert d["student_preset"] in STUDENTS[d["student"]].Config.presets()
    assert d["student_preset"] in STUDENTS[d["blind_student"]].Config.presets()
    for key in ("teacher_steps", "samples_per_task", "collect_envs", "distill_epochs", "eval_episodes"):
        assert isinstance(d[key], int) and d[key] > 0, key


def test_check_steps_every_task(domain):
    rows = domain.check(domain.tasks("test")[:3], steps=300)
    assert [r["name"] for r in rows] == domain.tasks("test")[:3]
    assert all(r["ok"] and r["error"] is None and r["episodes"] >= 1 for r in rows)


def test_demo_training_tasks_are_the_teachers_own_capped_by_train_tasks(domain):
    from kdistill.demo import _demo_tasks

    splits = domain.splits()
    train, test = splits["train"], splits["test"]
    seen = {"run": {"tasks": train[:4]}}  # a teacher that trained on a prefix of the split
    assert _demo_tasks(splits, seen, 2, domain) == (train[:4], test[:2])
    assert _demo_tasks(splits, seen, None, domain, train_tasks=3) == (train[:3], test)
    assert _demo_tasks(splits, seen, None, domain, train_tasks=9) == (train[:4], test)  # never beyond the teacher's
    other = {"run": {"tasks": [train[1]]}}  # not a prefix: the whole split, capped
    assert _demo_tasks(splits, other, None, domain, train_tasks=2) == (train[:2], test)
