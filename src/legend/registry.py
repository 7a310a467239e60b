"""Named extension points: poolings, estimators, layouts, encoders and engines are each one `Registry`.

A registry maps a name to an item and a one-line description. Options, help texts and rule
descriptions are generated from it (`choices`, `describe`), so they cannot drift from what is
registered, and adding a mechanism is one function plus one `register` line, from inside legend or
from a user's own code. A built-in entry may be *declared* (name and description) in a light module
before the module that implements it registers the implementation, so the CLI can list the choices
without importing torch (`legend.registries`).

>>> ANIMALS = Registry("animal")
>>> _ = ANIMALS.register("cat", len, description="says meow")
>>> ANIMALS["cat"]("abc"), list(ANIMALS), ANIMALS.describe()
(3, ['cat'], 'cat (says meow)')
>>> ANIMALS["dog"]
Traceback (most recent call last):
...
ValueError: unknown animal 'dog'; choose from cat
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """An ordered name -> item mapping with descriptions; registration order is the order choices are shown in.

    Args:
        kind: what the items are ("pooling", "estimator", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def declare(self, name: str, description: str) -> None:
        """Name a built-in entry and describe it; the module that implements it registers it later."""
        self._check_name(name)
        if name in self._descriptions:
            raise ValueError(f"a {self.kind} named {name!r} is already declared")
        self._descriptions[name] = description

    def _check_name(self, name: str) -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r}: use letters, digits, '-' and '_'")

    def register(self, name: str, item: T, *, description: str | None = None, replace: bool = False) -> T:
        """Add `item` under `name`.

        Args:
            name: the name users type (letters, digits, `_` and `-`).
            item: the function or record.
            description: one line for help texts (a declared entry keeps its declared one).
            replace: allow replacing an existing entry (otherwise a ValueError).

        Returns:
            The item.
        """
        self._check_name(name)
        if name in self._items and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered (pass replace=True)")
        declared = self._descriptions.get(name) if name not in self._items else None
        if description is None and declared is None:
            raise ValueError(f"{self.kind} {name!r}: give a description (one line for help texts)")

        self._items[name] = item
        self._descriptions[name] = declared or description or ""
        return item

    def unregister(self, name: str) -> T:
        """Remove and return the entry `name` (a KeyError when there is none)."""
        item = self._items.pop(name)
        self._descriptions.pop(name)
        return item

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            if name in self._descriptions:
                raise RuntimeError(
                    f"{self.kind} {name!r} is declared but not implemented: import the module that registers it"
                ) from None
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.choices())}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._descriptions)

    def __len__(self) -> int:
        return len(self._descriptions)

    def __contains__(self, name: object) -> bool:
        return name in self._descriptions

    def choices(self) -> tuple[str, ...]:
        """Every name (declared or registered), in the order they were first named."""
        return tuple(self._descriptions)

    def missing(self) -> tuple[str, ...]:
        """Declared names whose implementation is not registered (yet)."""
        return tuple(n for n in self._descriptions if n not in self._items)

    def order(self, name: str) -> int:
        """The position of `name` in registration order (used for documented tie-breaks)."""
        return self.choices().index(name)

    def description(self, name: str) -> str:
        self[name]
        return self._descriptions[name]

    def describe(self, sep: str = " | ") -> str:
        """`name (description)` for every entry, for help texts."""
        return sep.join(f"{name} ({description})" for name, description in self._descriptions.items())

    def check(self, name: str, option: str | None = None) -> str:
        """`name` if it is registered, else a ValueError naming the option and the choices."""
        if name not in self._descriptions:
            where = f"{option}: " if option else ""
            raise ValueError(f"{where}unknown {self.kind} {name!r}; choose from {', '.join(self.choices())}")
        return name
