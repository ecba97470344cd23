"""`Record`: the package's small immutable records, for what a dataclass would be, at a cold start's price.

A frozen dataclass makes its class by compiling five methods (about 0.5 ms each at import, some 25 of them on the
hot functions' path); a `typing.NamedTuple` evaluates every field's annotation (about 0.2 ms) and is a tuple,
which `json.dumps` writes as the array of its values (a secret among them, when one is logged). A record's class
compiles its `__init__` alone (about 0.03 ms); the rest is shared here. Records are not tuples: logged, they are
written as their repr (`default=str`), which leaves out the fields named in `_hidden`.

Fields are the class's annotated names (a `ClassVar` is not one), in order, a subclass's after its base's (one it
declares again keeps its place, with the new default); a value given in the class body is that field's default; a
`__post_init__` runs once they are set, by `__init__` and by `_replace` (`copy.replace`) alike. `_uncompared`
names fields left out of equality and the hash. Type checkers read a record as a frozen dataclass
(`dataclass_transform`); the `dataclasses` module's helpers (`fields`, `asdict`, `replace`) do not take one.
"""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Any, ClassVar, Self, dataclass_transform

# An annotation naming ClassVar, however typing was imported (`ClassVar[...]`, `typing.ClassVar`, `t.ClassVar`).
_CLASS_VAR = re.compile(r"^(?:\w+\.)?ClassVar\b")


@dataclass_transform(frozen_default=True)
class Record:
    _fields: ClassVar[tuple[str, ...]] = ()
    _hidden: ClassVar[frozenset[str]] = frozenset()
    _uncompared: ClassVar[frozenset[str]] = frozenset()
    _compared: ClassVar[Any] = None  # the compared fields' values from an instance's __dict__ (itemgetter)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__annotations__", {})  # strings (annotations are never evaluated here)
        added = (n for n, kind in own.items() if not _CLASS_VAR.match(str(kind)))
        cls._fields = tuple(dict.fromkeys((*cls._fields, *added)))
        cls.__match_args__ = cls._fields  # type: ignore[attr-defined,misc]
        compared = [n for n in cls._fields if n not in cls._uncompared]
        cls._compared = itemgetter(*compared) if compared else (lambda _values: ())
        defaults = {}
        for name in cls._fields:  # a default given here, or by the record this one extends
            for base in cls.__mro__:
                if name in base.__dict__:
                    defaults[name] = base.__dict__[name]
                    break
        parameters = ", ".join(f"{n}=__record_defaults[{n!r}]" if n in defaults else n for n in cls._fields)
        body = "".join(f"\n    __record_d[{n!r}] = {n}" for n in cls._fields)
        if hasattr(cls, "__post_init__"):  # checks of the fields, once they are set (as a dataclass's)
            body += "\n    __record_self.__post_init__()"
        source = f"def __init__(__record_self, {parameters}):\n    __record_d = __record_self.__dict__{body}\n"
        namespace: dict[str, Any] = {"__record_defaults": defaults}
        exec(compile(source, f"<record {cls.__qualname__}>", "exec"), namespace)  # noqa: S102 - our own field names
        init = namespace["__init__"]
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = init  # type: ignore[method-assign]

    def _replace(self, **changes: Any) -> Self:
        """A copy with `changes`, checked as a new record is (as `dataclasses.replace`)."""
        return type(self)(**{**self.__dict__, **changes})

    __replace__ = _replace  # copy.replace

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(self._compared(self.__dict__) == self._compared(other.__dict__))

    def __hash__(self) -> int:
        return hash((type(self), self._compared(self.__dict__)))

    def __repr__(self) -> str:
        values = self.__dict__
        shown = ", ".join(f"{n}={values[n]!r}" for n in self._fields if n not in self._hidden)
        return f"{type(self).__name__}({shown})"
