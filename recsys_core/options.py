"""Typed model options: every model declares one frozen dataclass of its options, and everything that
takes options (the ``train`` command line, the flow's ``model_options``, prefect.yaml, resuming, the docs)
reads that one declaration: names, types, defaults, presets, help texts, allowed values and ranges.

A field is declared with :func:`option` (its help text and constraints travel in the field's metadata,
where a sweep can read them too); a subclass may change only a default by re-declaring the field with a
plain value, and keeps the help and constraints of its base::

    @options
    class MFOptions(LoopOptions):
        dim: int = option(16, "embedding size", low=1)
        lr: float = 0.002            # same option as LoopOptions.lr, another default

``SomeOptions.resolve({"dim": 32}, model="mf")`` gives the validated options (defaults, then a preset
where the model has presets, then the given values). Every refusal is one sentence naming the model,
the option and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Self, TypeVar

from recsys_core.errors import RecsysError

KINDS = ("int", "float", "bool", "str", "ints")


def option(default: Any, help: str, *, choices: typing.Iterable[str] | None = None, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False, item_low: int | None = None,
           min_items: int = 0, log: bool = False, resumable: bool = False) -> Any:
    """A declared option. ``low``/``high`` bound numbers (``*_open``: the bound itself is excluded),
    ``item_low``/``min_items`` bound the items and length of an integer list, ``choices`` the strings.
    ``log`` tells a sweep to search the range on a log scale; ``resumable`` options may change when a
    run is resumed (they do not change what was computed so far)."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "low": low, "high": high,
                "low_open": low_open, "high_open": high_open, "item_low": item_low, "min_items": min_items,
                "log": log, "resumable": resumable}
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionInfo:
    """What a command line, a sweep or a document needs to know of one option."""

    name: str
    kind: str                     # one of KINDS ("ints": a list of integers)
    optional: bool                # None is allowed (means "not set", e.g. no preset)
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    item_low: int | None = None
    min_items: int = 0
    log: bool = False
    resumable: bool = False

    def range_text(self) -> str:
        """'at least 0 and below 1' style, or '' without bounds."""
        parts = []
        if self.low is not None:
            parts.append(f"{'above' if self.low_open else 'at least'} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"{'below' if self.high_open else 'at most'} {_num(self.high)}")
        return " and ".join(parts)


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind(annotation) -> tuple[str, bool]:
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    if annotation is bool:
        return "bool", optional
    if annotation is int:
        return "int", optional
    if annotation is float:
        return "float", optional
    if annotation is str:
        return "str", optional
    if typing.get_origin(annotation) is tuple and typing.get_args(annotation)[:1] == (int,):
        return "ints", optional
    raise TypeError(f"unsupported option type {annotation!r}")


_Options = TypeVar("_Options", bound="ModelOptions")


# option() is not named a field specifier: its default is positional, which a type checker would not read as
# a default; seen as a plain default value, every option has one, as it does at run time.
@typing.dataclass_transform(frozen_default=True)
def options(cls: type[_Options]) -> type[_Options]:
    """Class decorator: a frozen dataclass whose re-declared fields keep their base's help and constraints."""
    cls = dataclass(frozen=True)(cls)
    inherited: dict[str, Any] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in getattr(base, "__dataclass_fields__", {}).values():
            if f.metadata:
                inherited[f.name] = f.metadata
    for f in dataclasses.fields(cls):
        if not f.metadata:
            if f.name not in inherited:
                raise TypeError(f"{cls.__name__}.{f.name} is declared without option(...) and has no base option")
            f.metadata = types.MappingProxyType(dict(inherited[f.name]))
    hints = typing.get_type_hints(cls)
    cls._infos = tuple(
        OptionInfo(f.name, *_kind(hints[f.name]), default=_plain(f.default),
                   **{k: v for k, v in f.metadata.items()})
        for f in dataclasses.fields(cls))
    for info in cls._infos:  # a preset or default that breaks its own rules is a programming error
        if info.default is not None or not info.optional:
            _checked(info, info.default, cls.__name__)
    return cls


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _checked(info: OptionInfo, value: Any, model: str) -> Any:
    """``value`` normalized for ``info`` (int -> float for floats, list -> tuple for lists), or a RecsysError."""
    given = value

    def bad(what: str) -> RecsysError:
        return RecsysError(f"model {model}: option {info.name} must be {what}, got {given!r}")

    if value is None:
        if info.optional:
            return None
        raise bad("set")
    if info.kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if info.kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        if info.choices is not None and value not in info.choices:
            raise bad(f"one of {', '.join(info.choices)}")
        return value
    if info.kind == "ints":
        if isinstance(value, (str, bytes)) or not isinstance(value, typing.Iterable):
            raise bad("a list of integers")
        items = list(value)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise bad("a list of integers")
        if info.item_low is not None and any(v < info.item_low for v in items):
            raise bad(f"a list of integers of at least {info.item_low}")
        if len(items) < info.min_items:
            raise bad(f"a list of at least {info.min_items} integer{'s' if info.min_items > 1 else ''}")
        return tuple(items)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad("an integer" if info.kind == "int" else "a number")
    if info.kind == "int":
        if not isinstance(value, int):
            raise bad("an integer")
    elif not math.isfinite(value):
        raise bad("a finite number")
    else:
        value = float(value)
    too_low = info.low is not None and (value <= info.low if info.low_open else value < info.low)
    too_high = info.high is not None and (value >= info.high if info.high_open else value > info.high)
    if too_low or too_high:
        raise bad(info.range_text())
    return value


@options
class ModelOptions:
    """Base of every model's options: its hyperparameters, what it learns. How a run is carried out and
    evaluated (device, threads, processes, resume, k, recall_users, eval_batch_size, amp) is not an option
    of the model but a run setting (``recsys_core.settings.RunSettings``)."""

    presets: ClassVar[dict[str, dict]] = {}
    _infos: ClassVar[tuple[OptionInfo, ...]]  # every option, set by @options
    # The search space a sweep uses for this model when it declares none (recsys_core.sweep; docs/sweeps.md):
    # {option: {"choices": [...]} or {"low": .., "high": .., "log": bool}}; {} = none shipped.
    sweep_space: ClassVar[dict[str, dict]] = {}

    # --- reading the declaration --------------------------------------------------------------------
    @classmethod
    def describe(cls) -> tuple[OptionInfo, ...]:
        """Every option with its type, default, help and constraints, in declaration order."""
        return cls._infos

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(info.name for info in cls._infos)

    # --- making validated options ---------------------------------------------------------------------
    @classmethod
    def resolve(cls, given: Mapping[str, Any] | None = None, model: str = "") -> Self:
        """Defaults, then the preset (``given["preset"]``, where the model has presets), then ``given``
        (None values count as not given). Every value is checked; unknown names are refused."""
        model = model or cls.__name__
        given = {k: v for k, v in (given or {}).items() if v is not None}
        infos = {info.name: info for info in cls._infos}
        unknown = sorted(set(given) - set(infos))
        if unknown:
            raise RecsysError(f"model {model} has no option {', '.join(unknown)}; "
                              f"its options are {', '.join(sorted(infos))}")
        values: dict[str, Any] = {}
        preset = given.get("preset")
        if preset is not None:
            _checked(infos["preset"], preset, model)
            values.update(cls.presets[preset])
        values.update(given)
        checked = {name: _checked(infos[name], value, model) for name, value in values.items()}
        config = cls(**checked)
        config.check(model)
        return config

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any], model: str = "") -> Self:
        """Options written by :meth:`to_dict` (other keys of the mapping, e.g. a run's "model", are ignored)."""
        names = set(cls.names())
        checked = {k: _checked(info, saved[k], model or cls.__name__) for info in cls._infos
                   if (k := info.name) in saved and k in names}
        config = cls(**checked)
        config.check(model or cls.__name__)
        return config

    def replace(self, model: str = "", **changes) -> Self:
        """A copy with ``changes`` checked as :meth:`resolve` checks them."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise RecsysError(f"model {model or type(self).__name__} has no option {', '.join(unknown)}")
        infos = {info.name: info for info in self._infos}
        checked = {k: _checked(infos[k], v, model or type(self).__name__) for k, v in changes.items()}
        config = dataclasses.replace(self, **checked)
        config.check(model or type(self).__name__)
        return config

    def check(self, model: str) -> None:
        """Rules between options (one option's range is declared with it); raise RecsysError."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists for integer lists)."""
        return {info.name: _plain(getattr(self, info.name)) for info in self._infos}
