"""Plugin discovery (entry points and KDISTILL_PLUGINS), the three error cases, and the CLI listing."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdistill.errors import PluginError, UnknownNameError
from kdistill.plugins import Plugins

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_SOURCE = """
import click
from kdistill import hookimpl

__version__ = "9.9.9"

class Toy:
    pass

@hookimpl
def register_students(register):
    register("{student}", Toy)

@hookimpl
def register_commands(register):
    @click.command()
    def hello():
        click.echo("hello from {student}")
    register("hello-{student}", hello)
"""


def write_module(folder: Path, name: str, student: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(PLUGIN_SOURCE.format(student=student)))
    return path


def make_dist(folder: Path, module: str, ep_name: str, student: str, broken: bool = False) -> None:
    """A minimal installed distribution on sys.path exposing an entry point in group kdistill."""
    if broken:
        (folder / f"{module}.py").write_text("raise RuntimeError('boom at import')\n")
    else:
        write_module(folder, module, student)
    info = folder / f"{module}_dist-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}-dist\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[kdistill]\n{ep_name} = {module}\n")


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("KDISTILL_PLUGINS", raising=False)
    monkeypatch.delenv("KDISTILL_DISABLE_PLUGINS", raising=False)
    return monkeypatch


def test_builtin_plugins_come_from_entry_points(clean_env):
    plugins = Plugins().load()
    assert "core" in plugins.info and "unimal" in plugins.info
    assert "entry point" in plugins.info["core"].source
    assert "unimal" in plugins.domains.names()
    assert plugins.domains.entry("unimal").plugin == "unimal"


def test_discovery_through_an_entry_point(clean_env, tmp_path):
    make_dist(tmp_path, "kd_ep_plugin", "epplug", "ep-student")
    clean_env.syspath_prepend(str(tmp_path))
    plugins = Plugins().load()
    assert plugins.info["epplug"].version == "1.2.3"
    assert plugins.students.entry("ep-student").plugin == "epplug"
    assert "hello-ep-student" in plugins.commands


def test_discovery_through_env_var_module_and_path(clean_env, tmp_path):
    write_module(tmp_path, "kd_mod_plugin", "mod-student")
    path_plugin = write_module(tmp_path / ".." / tmp_path.name, "kd_path_plugin", "path-student")
    clean_env.syspath_prepend(str(tmp_path))
    clean_env.setenv("KDISTILL_PLUGINS", f"kd_mod_plugin, {path_plugin}")
    plugins = Plugins().load()
    assert plugins.students.entry("mod-student").plugin == "kd_mod_plugin"
    assert plugins.students.entry("path-student").plugin == "kd_path_plugin"
    assert plugins.info["kd_mod_plugin"].version == "9.9.9"


def test_disable_plugins(clean_env, tmp_path):
    write_module(tmp_path, "kd_off_plugin", "off-student")
    clean_env.syspath_prepend(str(tmp_path))
    clean_env.setenv("KDISTILL_PLUGINS", "kd_off_plugin")
    clean_env.setenv("KDISTILL_DISABLE_PLUGINS", "kd_off_plugin,unimal")
    plugins = Plugins().load()
    assert "kd_off_plugin" not in plugins.info and "unimal" not in plugins.info
    assert "off-student" not in plugins.students


def test_duplicate_registration_names_both_plugins(clean_env, tmp_path):
    write_module(tmp_path, "kd_dup_a", "same-name")
    write_module(tmp_path, "kd_dup_b", "same-name")
    clean_env.syspath_prepend(str(tmp_path))
    clean_env.setenv("KDISTILL_PLUGINS", "kd_dup_a,kd_dup_b")
    with pytest.raises(PluginError) as info:
        Plugins().load()
    message = str(info.value)
    assert "'same-name'" in message and "'kd_dup_a'" in message and "'kd_dup_b'" in message


def test_plugin_that_fails_to_import_names_plugin_and_entry_point(clean_env, tmp_path):
    make_dist(tmp_path, "kd_broken_plugin", "brokenplug", "x", broken=True)
    clean_env.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as info:
        Plugins().load()
    message = str(info.value)
    assert "'brokenplug'" in message and "kd_broken_plugin" in message and "boom at import" in message
    assert "\n" not in message


def test_missing_env_plugin_is_a_clear_error(clean_env):
    clean_env.setenv("KDISTILL_PLUGINS", "kd_no_such_module_xyz")
    with pytest.raises(PluginError, match="kd_no_such_module_xyz.*KDISTILL_PLUGINS"):
        Plugins().load()


def test_unknown_name_lists_available_and_closest(clean_env):
    plugins = Plugins().load()
    with pytest.raises(UnknownNameError) as info:
        plugins.domains.get("unimall")
    message = str(info.value)
    assert "Did you mean 'unimal'?" in message and "Available:" in message and "unimal" in message


def run_cli(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("KDISTILL_PLUGINS", "KDISTILL_DISABLE_PLUGINS")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "kdistill.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_cli_plugins_json_lists_builtins_and_env_plugin(tmp_path):
    path = write_module(tmp_path, "kd_cli_plugin", "cli-student")
    out = run_cli("plugins", "--json", env_extra={"KDISTILL_PLUGINS": str(path)})
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["plugins"]}
    assert {"core", "unimal", "kd_cli_plugin"} <= set(rows)
    assert rows["kd_cli_plugin"]["registers"] == {"students": ["cli-student"], "commands": ["hello-cli-student"]}
    assert rows["unimal"]["registers"]["domains"] == ["unimal"]
    # the plugin's command is reachable
    hello = run_cli("hello-cli-student", env_extra={"KDISTILL_PLUGINS": str(path)})
    assert hello.returncode == 0 and "hello from cli-student" in hello.stdout


def test_cli_plugins_table_and_errors(tmp_path):
    out = run_cli("plugins")
    assert out.returncode == 0 and "kdistill plugins" in out.stdout and "unimal" in out.stdout
    bad = run_cli("plugins", env_extra={"KDISTILL_PLUGINS": "kd_no_such_module_xyz"})
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "kd_no_such_module_xyz" in bad.stderr
    debug = run_cli("--debug", "plugins", env_extra={"KDISTILL_PLUGINS": "kd_no_such_module_xyz"})
    assert "Traceback" in debug.stderr


def test_cli_domains_json(tmp_path):
    out = run_cli("domains", "--json")
    assert out.returncode == 0, out.stderr
    domains = {d["name"]: d for d in json.loads(out.stdout)["domains"]}
    assert "unimal" in domains
    assert set(domains["unimal"]) >= {"name", "plugin", "splits", "error"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_domains_or_plugins():
    forbidden = {"domains", "plugins"}  # the source folders, which are not packages
    for folder in ("domains", "plugins"):
        forbidden |= {f"kdistill_{p.name}" for p in (ROOT / folder).iterdir() if (p / "__init__.py").exists()}
    assert {"kdistill_unimal", "kdistill_cartpole"} <= forbidden
    offenders = {}
    for path in (ROOT / "kdistill").rglob("*.py"):
        bad = _imported_modules(path) & forbidden
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, offenders
