"""Small immutable records that hold a secret (a key, a token, a password, a CVV, a callback's raw text).

Not tuples: a tuple is written by `json.dumps` as an array of its values, so a record logged as a Powertools
`extra` would show its secret. These are written through `default=str`, their repr, which leaves the secret
out. (A frozen dataclass does the same at ten times the cost of creating its class at import.)
"""

from __future__ import annotations

from typing import Any, ClassVar


class Secretive:
    """Fields are the `__slots__`, set once by the subclass's `__init__` (`_set`); `_hidden` names the fields the
    repr leaves out. Equal when of the same class with equal fields."""

    __slots__: tuple[str, ...] = ()
    _hidden: ClassVar[frozenset[str]] = frozenset()

    def _set(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__ if name not in self._hidden)
        return f"{type(self).__name__}({shown})"
