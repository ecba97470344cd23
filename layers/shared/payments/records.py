"""`Record`: the package's small immutable records, for what a dataclass would be, at a cold start's price.

A frozen dataclass makes its class by compiling five methods (about 0.5 ms each at import, some 25 of them on the
hot functions' path); a `typing.NamedTuple` evaluates every field's annotation (about 0.2 ms) and is a tuple,
which `json.dumps` writes as the array of its values (a secret among them, when one is logged). A record's class
compiles its `__init__` alone (about 0.03 ms); the rest is shared here. Records are not tuples: logged, they are
written as their repr (`default=str`), which leaves out the fields named in `_hidden`.

Fields are the class's annotated names (a `ClassVar` is not one), in order; a value given in the class body is
that field's default; a `__post_init__` runs once they are set. Type checkers read a record as a frozen dataclass
(`dataclass_transform`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Self, dataclass_transform


@dataclass_transform(frozen_default=True)
class Record:
    _fields: ClassVar[tuple[str, ...]] = ()
    _hidden: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__annotations__", {})  # strings (annotations are never evaluated here)
        added = tuple(n for n, kind in own.items() if not str(kind).startswith(("ClassVar", "typing.ClassVar")))
        cls._fields = (*cls._fields, *added)
        defaults = {}
        for name in cls._fields:  # a default given here, or by the record this one extends
            for base in cls.__mro__:
                if name in base.__dict__:
                    defaults[name] = base.__dict__[name]
                    break
        parameters = ", ".join(f"{n}=_defaults[{n!r}]" if n in defaults else n for n in cls._fields)
        body = "".join(f"\n    _d[{n!r}] = {n}" for n in cls._fields) or "\n    pass"
        if hasattr(cls, "__post_init__"):  # checks of the fields, once they are set (as a dataclass's)
            body += "\n    self.__post_init__()"
        source = f"def __init__(self, {parameters}):\n    _d = self.__dict__{body}\n"
        namespace: dict[str, Any] = {"_defaults": defaults}
        exec(compile(source, f"<record {cls.__qualname__}>", "exec"), namespace)  # noqa: S102 - our own field names
        init = namespace["__init__"]
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = init  # type: ignore[method-assign]

    def _values(self) -> tuple[Any, ...]:
        values = self.__dict__
        return tuple(values[n] for n in self._fields)

    def _replace(self, **changes: Any) -> Self:
        """A copy with `changes` (as `dataclasses.replace`)."""
        unknown = set(changes) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]}")
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__, **changes)
        return copy

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        values = self.__dict__
        shown = ", ".join(f"{n}={values[n]!r}" for n in self._fields if n not in self._hidden)
        return f"{type(self).__name__}({shown})"
