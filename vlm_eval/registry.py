"""One `Registry` class; one instance per extension point.

Entries are registered either directly (a decorator) or lazily as an import path, so that listing
names never imports model code.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from vlm_eval.errors import UnknownNameError


class Registry:
    """Maps names to objects (classes or functions) of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator registering the decorated object under `name`."""

        def add(obj: Any) -> Any:
            self._add(name, obj)
            return obj

        return add

    def register_lazy(self, name: str, target: str) -> None:
        """Register `"package.module:attribute"`, imported on first `get`."""
        self._add(name, target)

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def _add(self, name: str, entry: Any) -> None:
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
