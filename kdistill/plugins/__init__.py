"""Plugins: the hooks kdistill calls (``hookspecs``), their discovery (``manager``), the named registries they fill
(``registry``) and the core's own registrations (``builtin``, entry point ``core``)."""

from kdistill.plugins.manager import (
                                      DISABLE_ENV,
                                      ENTRY_POINT_GROUP,
                                      KINDS,
                                      PLUGINS_ENV,
                                      SINGULAR,
                                      PluginInfo,
                                      Plugins,
                                      get_domain,
                                      get_plugins,
                                      reset_plugins,
)
from kdistill.plugins.registry import Entry, Registry

__all__ = ["DISABLE_ENV", "ENTRY_POINT_GROUP", "KINDS", "PLUGINS_ENV", "SINGULAR", "Entry", "PluginInfo", "Plugins",
           "Registry", "get_domain", "get_plugins", "reset_plugins"]
