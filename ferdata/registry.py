"""A tiny name -> object registry used for readers, face backends, models and losses.

Anything the user chooses by name in params.yaml goes through a Registry, so an
unknown name always fails the same way: with the list of names that do exist.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from ferdata.errors import NamedKeyError

T = TypeVar("T")


class UnknownNameError(NamedKeyError):
    """Raised when a name is not registered; the message lists the known names."""


class Registry(Generic[T]):
    """Maps names to registered objects (classes or factory functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; duplicate names are a code error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):       # TypeError: an unhashable name (a YAML list or mapping)
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
