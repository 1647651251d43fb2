"""Named registries filled by plugin hooks; each entry remembers which plugin registered it."""

from __future__ import annotations

from typing import Any, Iterator

import attrs

from kdistill.errors import PluginError, unknown_name


@attrs.frozen
class Entry:
    name: str
    obj: Any
    plugin: str


class Registry:
    """A name -> object map for one kind of thing (domains, students, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, obj: Any, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} with an invalid name {name!r}; names are non-empty strings.")
        if name in self._entries:
            first = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {first!r} and by plugin {plugin!r}. "
                f"Disable one with KDISTILL_DISABLE_PLUGINS={plugin}."
            )
        self._entries[name] = Entry(name, obj, plugin)

    def get(self, name: str) -> Any:
        try:
            return self._entries[name].obj
        except KeyError:
            raise unknown_name(self.kind, name, self._entries) from None

    def entry(self, name: str) -> Entry:
        self.get(name)
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def by_plugin(self, plugin: str) -> list[str]:
        return sorted(e.name for e in self._entries.values() if e.plugin == plugin)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
