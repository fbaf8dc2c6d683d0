"""One registry mechanism for every pluggable kind: encoders, clusterers, reducers, labellers.

Built-ins register exactly as a third-party package does. Other distributions are found
through entry points: a package declares, in its ``pyproject.toml``::

    [project.entry-points."replens.encoders"]
    my-vit = "my_package.replens_plugin"

and the module (or callable) named there is imported the first time the registry is read;
importing it runs its ``@register_encoder`` (or ``@register_clusterer`` …) decorators. An
entry point may also name a callable, which is called with no arguments.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUPS = {
    "encoder": "replens.encoders",
    "clusterer": "replens.clusterers",
    "reducer": "replens.reducers",
    "labeller": "replens.labellers",
}


class RegistrationWarning(UserWarning):
    """A name registered twice, or a plug-in that failed to load."""


_ALL: list[Registry[object]] = []


def reload_plugins() -> None:
    """Look for entry points again in every registry (after installing a plug-in into a running process)."""
    for registry in list(_ALL):
        registry.reload_plugins()


class Registry(Generic[T]):
    """Named items of one kind, in registration order, thread-safe.

    ``kind`` names the items in messages ("encoder"); ``warning`` is the warning class raised
    when a name is registered twice (the later registration wins, as in timm) or a plug-in
    cannot be imported (the rest still load).
    """

    def __init__(
        self, kind: str, *, warning: type[Warning] = RegistrationWarning, entry_point_group: str | None = None
    ) -> None:
        self.kind = kind
        self.warning = warning
        self.entry_point_group = entry_point_group if entry_point_group is not None else ENTRY_POINT_GROUPS.get(kind)
        self._items: dict[str, T] = {}
        self._lock = threading.RLock()
        self._plugins_loaded = False
        _ALL.append(self)  # type: ignore[arg-type]

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``; a second registration warns and replaces."""
        with self._lock:
            if name in self._items:
                warnings.warn(
                    f"{self.kind} {name!r} registered twice; keeping the later one", self.warning, stacklevel=3
                )
            self._items[name] = item
        return item

    def remove(self, name: str) -> T | None:
        """Forget ``name`` (a test's temporary item); returns what was registered, if anything."""
        with self._lock:
            return self._items.pop(name, None)

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object."""

        def decorate(item: T) -> T:
            return self.add(name, item)

        return decorate

    def get(self, name: str) -> T | None:
        self.load_plugins()
        return self._items.get(name)

    def names(self) -> list[str]:
        self.load_plugins()
        return list(self._items)

    def values(self) -> list[T]:
        self.load_plugins()
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def load_plugins(self) -> None:
        """Import every entry point of this registry's group, once per process."""
        if self._plugins_loaded or not self.entry_point_group:
            return
        with self._lock:
            if self._plugins_loaded:
                return
            # Set first: a plug-in module that reads the registry while importing must not recurse.
            self._plugins_loaded = True
            for entry in metadata.entry_points(group=self.entry_point_group):
                self._load_entry_point(entry)

    def reload_plugins(self) -> None:
        """Look for entry points again (after installing a plug-in into a running process)."""
        with self._lock:
            self._plugins_loaded = False
        self.load_plugins()

    def _load_entry_point(self, entry: metadata.EntryPoint) -> None:
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as exc:
            warnings.warn(
                f"{self.kind} plug-in {entry.name!r} ({entry.value}) could not be loaded: {exc}. "
                f"Reinstall or remove the package that provides it.",
                self.warning,
                stacklevel=2,
            )
