"""Plugin discovery and the registries that plugins fill.

Plugins are found in two places, in this order:

1. the entry-point group ``kdistill`` (built-in domains and plugins use it too, no special case);
2. modules named in ``KDISTILL_PLUGINS``: comma-separated module names or paths to ``.py`` files.

``KDISTILL_DISABLE_PLUGINS`` (comma-separated plugin names) switches named plugins off.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pluggy

from kdistill.errors import KdistillError, PluginError, unknown_name
from kdistill.plugins import hookspecs
from kdistill.plugins.registry import Registry

ENTRY_POINT_GROUP = "kdistill"
PLUGINS_ENV = "KDISTILL_PLUGINS"
DISABLE_ENV = "KDISTILL_DISABLE_PLUGINS"

# registry kind -> hook name. A new hook is a line here and a spec in hookspecs.
KINDS = {
    "domains": "register_domains",
    "context_encoders": "register_context_encoders",
    "students": "register_students",
    "losses": "register_losses",
    "teachers": "register_teachers",
    "commands": "register_commands",
    "executors": "register_executors",
}
SINGULAR = {
    "domains": "domain",
    "context_encoders": "context encoder",
    "students": "student",
    "losses": "loss",
    "teachers": "teacher",
    "commands": "command",
    "executors": "executor",
}


@attrs.frozen
class PluginInfo:
    name: str
    version: str
    source: str  # "entry point NAME = VALUE" or "KDISTILL_PLUGINS: ..."


def _split_env(var: str) -> list[str]:
    return [part.strip() for part in os.environ.get(var, "").split(",") if part.strip()]


def _import_path(path: Path) -> ModuleType:
    name = f"kdistill_local_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Plugins:
    """The loaded plugins and everything they registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("kdistill")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.registries = {kind: Registry(SINGULAR[kind]) for kind in KINDS}

    # discovery -----------------------------------------------------------------------------------
    def load(self) -> "Plugins":
        disabled = set(_split_env(DISABLE_ENV))
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disabled:
                continue
            where = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP!r})"
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin {ep.name!r} failed to import from {where}: {type(exc).__name__}: {exc} "
                                  f"(run with --debug for the traceback)") from exc
            version = ep.dist.version if ep.dist is not None else "unknown"
            self._add(ep.name, module, version, where)
        for item in _split_env(PLUGINS_ENV):
            is_path = item.endswith(".py") or os.sep in item
            name = Path(item).stem if is_path else item
            if name in disabled:
                continue
            where = f"{PLUGINS_ENV} entry {item!r}"
            try:
                if is_path:
                    path = Path(item).expanduser()
                    if not path.is_file():
                        raise FileNotFoundError(f"no such file {str(path)!r}")
                    module = _import_path(path)
                else:
                    module = importlib.import_module(item)
            except Exception as exc:
                raise PluginError(f"plugin {name!r} failed to import from {where}: {type(exc).__name__}: {exc}") from exc
            self._add(name, module, str(getattr(module, "__version__", "local")), where)
        self._collect()
        return self

    def register_module(self, name: str, module: Any, version: str = "local", source: str = "code") -> None:
        """Register a plugin object directly (tests and embedding applications)."""
        self._add(name, module, version, source)
        self._collect(only=name)

    def _add(self, name: str, module: Any, version: str, source: str) -> None:
        if name in self.info:
            raise PluginError(f"two plugins are named {name!r} ({self.info[name].source} and {source}); rename one.")
        self.pm.register(module, name=name)
        self.info[name] = PluginInfo(name, version, source)

    def _collect(self, only: str | None = None) -> None:
        # Call each implementation on its own so every registration knows its plugin.
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                if only is not None and impl.plugin_name != only:
                    continue
                registry = self.registries[kind]

                def register(name, obj, _registry=registry, _plugin=impl.plugin_name):
                    _registry.add(name, obj, _plugin)

                try:
                    impl.function(register=register)
                except KdistillError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc} "
                        f"({self.info[impl.plugin_name].source}; run with --debug for the traceback)"
                    ) from exc

    # access --------------------------------------------------------------------------------------
    def __getattr__(self, kind: str) -> Registry:
        registries = self.__dict__.get("registries", {})
        if kind in registries:
            return registries[kind]
        raise AttributeError(kind)

    def registered_by(self, plugin: str) -> dict[str, list[str]]:
        return {kind: names for kind, reg in self.registries.items() if (names := reg.by_plugin(plugin))}


_PLUGINS: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, discovered on first use."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = Plugins().load()
    return _PLUGINS


def reset_plugins() -> None:
    """Forget discovered plugins (tests; after changing KDISTILL_PLUGINS)."""
    global _PLUGINS
    _PLUGINS = None


def get_domain(name: str, **options):
    """Build the domain registered as ``name`` with ``options`` (e.g. ``data_dir``).

    ``name`` may be ``NAME:KIND`` (e.g. ``unimal:vt``), the same as ``task_kind=KIND``. ``task_kind=None`` is left
    out (the domain's default kind); another value must be one of the domain's ``task_kinds``, else a one-line error says which there are.
    """
    plugins = get_plugins()
    name, sep, suffix = str(name).partition(":")
    if sep:
        # "unimal:vt": the DOMAIN argument of every command names the kind of task too
        if not suffix:
            raise KdistillError(f"domain {name + sep!r} ends with ':'; write NAME or NAME:KIND (e.g. unimal:vt).")
        if options.get("task_kind") not in (None, suffix):
            raise KdistillError(f"domain {name}:{suffix} and --task {options['task_kind']} name two kinds of task; "
                                f"give one.")
        options["task_kind"] = suffix
    factory = plugins.domains.get(name)
    if "task_kind" in options:
        kind = options.pop("task_kind")
        if kind is not None:
            kinds = tuple(getattr(factory, "task_kinds", ()) or ())
            if not kinds:
                raise KdistillError(f"domain {name!r} has one kind of task; NAME:KIND (or --task KIND) is for domains that "
                                    "offer several (see `kdistill domains`).")
            if kind not in kinds:
                raise unknown_name(f"kind of {name} task", str(kind), kinds)
            options["task_kind"] = kind
    domain = factory(**options)
    domain.build_options = dict(options)  # so another process can build it again (kdistill.executors.DomainRef)
    if getattr(domain, "name", None) != name:
        raise PluginError(f"plugin {plugins.domains.entry(name).plugin!r} registered domain {name!r}, but the domain it "
                          f"builds calls itself {getattr(domain, 'name', None)!r}; the registered name must equal Domain.name.")
    return domain
