"""Configuration: nested dataclasses, TOML files and command-line overrides.

Every stage of crforge has one small config dataclass; a run config nests them.
Values are resolved in three layers, each overriding the previous one:

1. the dataclass defaults,
2. a TOML file (``--config run.toml``),
3. command-line overrides (``--set label.driz_cr_snr="3.5 3.0"``).

An unknown key is always an error (a typo must never be silently ignored) and a value
of the wrong type is an error that names the dotted key, the expected type and the
value.

Supported field types: ``bool``, ``int``, ``float`` (ints accepted), ``str``,
:class:`pathlib.Path` (from strings), ``X | None``, unions, ``Literal[...]``,
:class:`enum.Enum` subclasses (by value or name), ``tuple[X, ...]`` and fixed-length
``tuple[X, Y]``, ``list[X]``, ``dict[str, X]``, ``typing.Any`` and nested dataclasses
(from TOML tables).

Examples
--------
>>> from dataclasses import dataclass, field
>>> @dataclass
... class Label:
...     driz_cr_snr: str = "3.5 3.0"
...     grow: int = 1
>>> @dataclass
... class Run:
...     name: str = "demo"
...     label: Label = field(default_factory=Label)
>>> cfg = load(Run, overrides=["label.grow=2"])
>>> cfg.label.grow
2
"""


import dataclasses
import difflib
import enum
import logging
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union

from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "ConfigKeyError",
    "ConfigTypeError",
    "ConfigValueError",
    "from_dict",
    "merge",
    "parse_override",
    "load",
    "load_section",
    "to_dict",
    "dumps_toml",
    "dumps_tables",
    "write_toml",
]

T = TypeVar("T")

_MISSING = dataclasses.MISSING
_NONE_TYPE = type(None)


# --------------------------------------------------------------------------- errors


class ConfigError(InputError):
    """Base class of configuration errors; ``key`` is the dotted key path (or "")."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class ConfigKeyError(ConfigError):
    """An unknown (or missing required) configuration key."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value of the wrong type."""


class ConfigValueError(ConfigError):
    """A configuration value of the right type but not an allowed value."""


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _type_name(tp: Any) -> str:
    if tp is _NONE_TYPE:
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    text = str(tp)
    for prefix in ("typing.", "pathlib.", "collections.abc."):
        text = text.replace(prefix, "")
    return text


def _unwrap(value: Any) -> Any:
    """Strip override wrappers, for messages."""
    if isinstance(value, _Override):
        return _unwrap(value.value)
    if isinstance(value, Mapping):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _type_error(where: str, tp: Any, value: Any, detail: str = "") -> ConfigTypeError:
    key = where or "<root>"
    value = _unwrap(value)
    msg = (
        f"config key {key!r} expects {_type_name(tp)}, "
        f"got {value!r} ({type(value).__name__})"
    )
    if detail:
        msg += f": {detail}"
    return ConfigTypeError(msg, where)


# --------------------------------------------------------------------------- overrides


@dataclasses.dataclass(frozen=True)
class _Override:
    """A command-line value: parsed as TOML when possible, with its raw text kept.

    The field type decides: a ``str`` field given ``--set name=2`` gets ``"2"``.
    """

    value: Any
    raw: str | None


def _parse_value(text: str) -> Any:
    if "\n" in text or "\r" in text:
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(s: str) -> tuple[str, Any]:
    """Split one ``KEY=VALUE`` override into its dotted key and its value.

    Parameters
    ----------
    s : str
        ``"simulate.n_exposures=2"``, ``'label.driz_cr_snr=3.5 3.0'``,
        ``"train.lr=[1e-3, 1e-4]"``.  Whitespace around the key and the value is
        stripped.

    Returns
    -------
    key : str
        The dotted key path, e.g. ``"simulate.n_exposures"``.
    value : object
        The value parsed as a TOML value when it is one (``2``, ``3.5``, ``true``,
        ``"abc"``, ``[1, 2]``, ``{a = 1}``), else the raw string (``"3.5 3.0"``).
        The final conversion is done by the field's type when the override is applied
        (see :func:`load`): a ``str`` field given ``2`` receives ``"2"``.

    Raises
    ------
    ValueError
        If there is no ``=`` or the key is empty or has an empty component.
    """
    key, _, text = _split_override(s)
    return key, _parse_value(text)


def _split_override(s: str) -> tuple[str, list[str], str]:
    if "=" not in s:
        raise ConfigValueError(f"override {s!r} is not of the form KEY=VALUE")
    key, text = s.split("=", 1)
    key = key.strip()
    parts = [p.strip() for p in key.split(".")]
    if not key or any(not p for p in parts):
        raise ConfigValueError(f"override {s!r} has an empty key or key component")
    return ".".join(parts), parts, text.strip()


def _set_nested(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    """Put ``value`` at ``parts`` in a nested dict, deep-merging tables."""
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, _Override) and isinstance(child.value, Mapping):
            child = dict(child.value)
        if child is None:
            child = {}
        elif not isinstance(child, Mapping):
            where = ".".join(parts[: i + 1])
            raise ConfigTypeError(
                f"config key {where!r} is a value, not a table: cannot set "
                f"{'.'.join(parts)!r}",
                where,
            )
        child = dict(child)
        node[part] = child
        node = child
    last = parts[-1]
    old = node.get(last)
    if isinstance(old, Mapping) and isinstance(value, _Override) and isinstance(
        value.value, Mapping
    ):
        merged = dict(old)
        for k, v in value.value.items():
            _set_nested(merged, [k], _Override(v, raw=None))
        node[last] = merged
    else:
        node[last] = value


# --------------------------------------------------------------------------- conversion


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as exc:
        raise TypeError(
            f"cannot resolve the type annotations of {cls.__qualname__}: {exc} "
            "(config dataclasses must be defined at module level)"
        ) from exc


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str, current: Any = _MISSING) -> Any:
    """Convert ``value`` to type ``tp``; ``current`` is the value being updated."""
    if isinstance(value, _Override):
        try:
            return _convert(tp, value.value, where, current)
        except (TypeError, ValueError):
            if value.raw is None or isinstance(value.value, str):
                raise
            return _convert(tp, value.raw, where, current)
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _convert_union(tp, value, where, current)
    if value is None:
        raise _type_error(where, tp, value, "None is only allowed for 'X | None' fields")
    if origin is Literal:
        return _convert_literal(tp, value, where)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _type_error(where, tp, value, "expected a table")
        if dataclasses.is_dataclass(current) and isinstance(current, tp):
            return merge(current, value, where=where)
        return from_dict(tp, value, where=where)
    if tp in (bool, int, float, str) or (isinstance(tp, type) and issubclass(tp, (PurePath, enum.Enum))):
        return _convert_scalar(tp, value, where)
    if tp in (tuple, list, dict) or origin in (tuple, list, Sequence, dict, Mapping):
        return _convert_container(tp, value, where)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _type_error(where, tp, value)
    raise TypeError(f"config key {where!r}: unsupported field type {_type_name(tp)}")


def _convert_union(tp: Any, value: Any, where: str, current: Any) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if _NONE_TYPE in args:
            return None
        raise _type_error(where, tp, value)
    members = [a for a in args if a is not _NONE_TYPE]
    if len(members) == 1:
        try:
            return _convert(members[0], value, where, current)
        except ConfigTypeError as exc:
            if exc.key != where or _is_dataclass_type(members[0]):
                raise
            raise _type_error(where, tp, value) from None
    # prefer a member that the value already is (int | float given 2 stays int)
    for member in sorted(members, key=lambda a: not _exact_instance(value, a)):
        try:
            return _convert(member, value, where, current)
        except (TypeError, ValueError):
            continue
    raise _type_error(where, tp, value)


def _convert_literal(tp: Any, value: Any, where: str) -> Any:
    args = typing.get_args(tp)
    for choice in args:
        if type(choice) is type(value) and choice == value:
            return choice
    allowed = ", ".join(repr(a) for a in args)
    raise ConfigValueError(f"config key {where or '<root>'!r} must be one of {allowed}; got {value!r}", where)


def _convert_scalar(tp: type, value: Any, where: str) -> Any:
    """bool, int, float (ints accepted), str, paths (from strings) and enums (value or name)."""
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if issubclass(tp, PurePath) and isinstance(value, (str, os.PathLike)):
        return tp(value)
    if issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if member.value == value and type(member.value) is type(value):
                return member
        if isinstance(value, str) and value in tp.__members__:
            return tp[value]
        allowed = ", ".join(repr(m.value) for m in tp)
        raise ConfigValueError(f"config key {where or '<root>'!r} must be one of {allowed}; got {value!r}",
                               where)
    raise _type_error(where, tp, value)


def _convert_container(tp: Any, value: Any, where: str) -> Any:
    """Tuples (``tuple[X, ...]`` or fixed), lists and sequences, dicts and mappings."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is dict or origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _type_error(where, tp, value, "expected a table")
        key_tp, val_tp = args if args else (Any, Any)
        return {_convert(key_tp, k, where): _convert(val_tp, v, _join(where, k)) for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise _type_error(where, tp, value, "expected an array")
    if tp is list or origin in (list, Sequence):
        item = args[0] if args else Any
        out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is not Sequence else tuple(out)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    args = () if args == ((),) else args
    if len(value) != len(args):
        raise _type_error(where, tp, value, f"expected {len(args)} items")
    return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _exact_instance(value: Any, tp: Any) -> bool:
    if isinstance(tp, type) and not typing.get_args(tp):
        if tp is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, tp)
    return False


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def _unknown_key(where: str, key: str, valid: list[str], cls: type) -> ConfigKeyError:
    dotted = _join(where, key)
    msg = f"unknown config key {dotted!r}"
    close = difflib.get_close_matches(str(key), valid, n=1)
    if close:
        msg += f" (did you mean {_join(where, close[0])!r}?)"
    place = f"{where!r} ({cls.__name__})" if where else cls.__name__
    msg += f"; valid keys in {place}: {', '.join(valid) if valid else '(none)'}"
    return ConfigKeyError(msg, dotted)


def _construct(cls: type[T], kwargs: dict[str, Any], where: str, base: Any) -> T:
    try:
        if base is None:
            return cls(**kwargs)
        return dataclasses.replace(base, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        # a __post_init__ validation error: say where it happened
        place = where or cls.__name__
        err_cls = ConfigTypeError if isinstance(exc, TypeError) else ConfigValueError
        raise err_cls(f"invalid config {place!r}: {exc}", where) from exc


def _build(cls: type[T], data: Mapping[str, Any], where: str, base: Any) -> T:
    if not _is_dataclass_type(cls):
        raise TypeError(f"{cls!r} is not a dataclass type")
    if isinstance(data, _Override):
        data = data.value
    if not isinstance(data, Mapping):
        raise _type_error(where, cls, data, "expected a table")
    hints = _hints(cls)
    fields = {f.name: f for f in _init_fields(cls)}
    valid = list(fields)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(where, key, valid, cls)
        f = fields[key]
        dotted = _join(where, key)
        if base is not None:
            current = getattr(base, key)
        else:
            current = _default_of(f)
        kwargs[key] = _convert(hints[key], value, dotted, current)
    if base is None:
        missing = [
            n for n, f in fields.items() if n not in kwargs and _default_of(f) is _MISSING
        ]
        if missing:
            keys = ", ".join(repr(_join(where, n)) for n in missing)
            raise ConfigKeyError(
                f"missing required config key(s) {keys}", _join(where, missing[0])
            )
    return _construct(cls, kwargs, where, base)


# --------------------------------------------------------------------------- public API


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build a (possibly nested) config dataclass from a mapping.

    Parameters
    ----------
    cls : type
        A dataclass type; its fields may be other dataclasses (built from tables).
    data : Mapping
        Field values, e.g. the result of :func:`tomllib.load`.  Missing keys keep
        their defaults; a nested table updates the field's default value, so only the
        keys given in it change.
    where : str, optional
        Dotted prefix used in error messages (the position of ``data`` inside a
        larger document).

    Returns
    -------
    object
        An instance of ``cls``.

    Raises
    ------
    ValueError
        (:class:`ConfigKeyError`) on an unknown key, naming its dotted path and the
        valid keys, or on a missing required key; (:class:`ConfigValueError`) on a
        value outside a ``Literal`` or rejected by the dataclass's ``__post_init__``.
    TypeError
        (:class:`ConfigTypeError`) on a value of the wrong type, naming the dotted
        key, the expected type and the value.
    """
    return _build(cls, data, where, None)


def merge(base_obj: T, data: Mapping[str, Any], *, where: str = "") -> T:
    """Return a copy of a config dataclass updated (deeply) from a mapping.

    Parameters
    ----------
    base_obj : dataclass instance
        The config to update; it is not modified.
    data : Mapping
        New values.  A table for a nested dataclass field updates only the keys it
        gives; any other value replaces the field.
    where : str, optional
        Dotted prefix used in error messages.

    Returns
    -------
    object
        A new instance of ``type(base_obj)`` (built with :func:`dataclasses.replace`,
        so ``__post_init__`` runs again).

    Raises
    ------
    ValueError, TypeError
        As :func:`from_dict`.
    """
    if not dataclasses.is_dataclass(base_obj) or isinstance(base_obj, type):
        raise TypeError(f"merge() needs a dataclass instance, got {base_obj!r}")
    return _build(type(base_obj), data, where, base_obj)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigValueError(f"{path}: invalid TOML: {exc}") from exc


def load(
    cls: type[T],
    toml_path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Resolve a config: defaults, then a TOML file, then ``KEY=VALUE`` overrides.

    Parameters
    ----------
    cls : type
        The (run or stage) config dataclass.
    toml_path : str or path-like, optional
        A TOML document whose tables mirror the nesting of ``cls``.
    overrides : sequence of str
        ``"section.key=value"`` strings (see :func:`parse_override`), applied in
        order; a later one wins.  A dotted key may also reach into a ``dict`` field.

    Returns
    -------
    object
        An instance of ``cls``.

    Raises
    ------
    FileNotFoundError
        If ``toml_path`` does not exist (the message names it).
    ValueError
        If the file is not valid TOML (the message names the file), or on an unknown
        key or a bad value (the message names the dotted key and, for keys from the
        file, the file; for overrides, the override).
    TypeError
        On a value of the wrong type (the message names the dotted key).
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if toml_path is not None:
        path = Path(toml_path)
        data = _read_toml(path)
        source = str(path)
        logger.debug("read config file %s", path)
    return _resolve(cls, data, source, [(t, t) for t in overrides], section="")


def load_section(
    cls: type[T],
    section: str,
    toml_path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Resolve one stage's config from the ``[section]`` table of a run config file.

    Parameters
    ----------
    cls : type
        The stage config dataclass.
    section : str
        Dotted name of the table that holds it in the run config (``"simulate"``).
    toml_path : str or path-like, optional
        A run config TOML document.  Only its ``[section]`` table is read (absent:
        defaults); the other tables belong to other stages and are not checked here.
    overrides : sequence of str
        ``KEY=VALUE`` strings; a key may be given relative to the section
        (``seed=3``) or with its prefix (``simulate.seed=3``).  An override of
        another section (``label.x=1`` while loading ``simulate``) is an unknown
        key: pass only the overrides meant for this stage.

    Returns
    -------
    object
        An instance of ``cls``.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        As :func:`load`; keys in messages carry the section prefix.
    """
    parts = [p for p in section.split(".") if p]
    if not parts:
        raise ValueError("load_section() needs a non-empty section name")
    data: Any = {}
    source = "defaults"
    if toml_path is not None:
        path = Path(toml_path)
        data = _read_toml(path)
        source = str(path)
        logger.debug("read config file %s (table [%s])", path, section)
    where = ""
    for part in parts:
        where = _join(where, part)
        if not isinstance(data, Mapping):
            break
        data = data.get(part, {})
        if not isinstance(data, Mapping):
            err = _type_error(where, cls, data, "expected a table")
            raise type(err)(f"{source}: {err}", where)
    prefix = ".".join(parts) + "."
    relative = []
    for original in overrides:
        key, _, _ = _split_override(original)
        text = original
        if key.startswith(prefix):
            text = key[len(prefix):] + "=" + original.split("=", 1)[1]
        relative.append((text, original))
    return _resolve(cls, dict(data), source, relative, section=".".join(parts))


def _resolve(
    cls: type[T],
    data: dict[str, Any],
    source: str,
    overrides: Sequence[tuple[str, str]],
    section: str,
) -> T:
    """Apply ``(override, as the user wrote it)`` pairs to ``data`` and build ``cls``."""
    override_keys: dict[str, str] = {}
    for text, original in overrides:
        key, parts, raw = _split_override(text)
        _set_nested(data, parts, _Override(_parse_value(raw), raw))
        override_keys[_join(section, key)] = original
        logger.debug("config override %s = %r", _join(section, key), raw)
    try:
        obj = from_dict(cls, data, where=section)
    except ConfigError as exc:
        origin = _origin_of(exc.key, override_keys)
        prefix = f"override {origin!r}" if origin else source
        if prefix == "defaults":
            raise
        raise type(exc)(f"{prefix}: {exc}", exc.key) from exc
    return obj


def _origin_of(key: str, override_keys: Mapping[str, str]) -> str | None:
    """The override responsible for an error at ``key``, if any."""
    if not key:
        return None
    base = re.sub(r"\[\d+\]", "", key)
    for okey in reversed(list(override_keys)):
        if base == okey or base.startswith(okey + ".") or okey.startswith(base + "."):
            return override_keys[okey]
    return None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Convert a config dataclass to plain Python data (JSON-compatible).

    Parameters
    ----------
    obj : dataclass instance
        The config.

    Returns
    -------
    dict
        Nested dicts for nested dataclasses; paths as strings, tuples as lists, enums
        as their values, ``None`` kept.  Fields with ``init=False`` are left out, so
        ``from_dict(type(obj), to_dict(obj)) == obj``.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict() needs a dataclass instance, got {obj!r}")
    return {f.name: _plain(getattr(obj, f.name)) for f in _init_fields(type(obj))}


def _toml_tree(value: Any, where: str, default: Any = _MISSING) -> Any:
    """Like :func:`_plain` but drops ``None`` (TOML has no null).

    ``default`` is the value ``value`` would have if left out (for nested
    dataclasses, the enclosing field's default), used to warn when dropping a
    ``None`` changes what reads back.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        same = isinstance(default, type(value))
        out = {}
        for f in _init_fields(type(value)):
            v = getattr(value, f.name)
            fdefault = getattr(default, f.name) if same else _default_of(f)
            if v is None:
                if fdefault is not None:
                    logger.warning(
                        "config key %r is None but its default is not; TOML cannot "
                        "hold None, so it is left out and reads back as the default",
                        _join(where, f.name),
                    )
                continue
            out[f.name] = _toml_tree(v, _join(where, f.name), fdefault)
        return out
    if isinstance(value, Mapping):
        return {
            str(k): _toml_tree(v, _join(where, k)) for k, v in value.items() if v is not None
        }
    if isinstance(value, (list, tuple)):
        items = []
        for i, v in enumerate(value):
            if v is None:
                raise ConfigValueError(
                    f"config key {where!r}: TOML arrays cannot hold None (item {i})", where
                )
            items.append(_toml_tree(v, f"{where}[{i}]"))
        return items
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return _toml_tree(value.value, where)
    return value


def dumps_toml(obj: Any, *, header: str | None = None) -> str:
    """Write a config dataclass as a TOML document.

    Parameters
    ----------
    obj : dataclass instance
        The config.  Nested dataclasses and dicts become tables, paths strings,
        tuples and lists arrays; ``None`` values are left out (TOML has no null).
    header : str, optional
        Text written first as ``#`` comment lines.

    Returns
    -------
    str
        The document; ``load(type(obj), file_with_it) == obj`` whenever every field
        that is ``None`` also defaults to ``None``.

    Raises
    ------
    TypeError
        If a value has no TOML representation.
    ValueError
        If an array holds ``None``.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"dumps_toml() needs a dataclass instance, got {obj!r}")
    return _dumps(_toml_tree(obj, ""), header)


def _dumps(tree: Mapping[str, Any], header: str | None) -> str:
    import tomli_w

    lines = [f"# {line}".rstrip() for line in (header or "").splitlines()]
    text = tomli_w.dumps(tree)
    return "\n".join(lines) + ("\n" if lines else "") + text


def dumps_tables(tables: Mapping[str, Any], *, header: str | None = None) -> str:
    """Write several config dataclasses as the tables of one TOML document.

    Parameters
    ----------
    tables : mapping
        Table name -> config dataclass instance (``{"train": TrainConfig(...)}``).
    header : str, optional
        Text written first as ``#`` comment lines.

    Returns
    -------
    str
        The document; ``load_section(cls, name, file)`` reads each table back.
    """
    return _dumps({name: _toml_tree(obj, name) for name, obj in tables.items()}, header)


def write_toml(obj: Any, path: str | os.PathLike[str], *, header: str | None = None) -> Path:
    """Write :func:`dumps_toml` of ``obj`` to ``path`` atomically (temp file, rename).

    Parameters
    ----------
    obj : dataclass instance or mapping
        The config, or table name -> config (see :func:`dumps_tables`).
    path : str or path-like
        Destination file; its directory must exist.
    header : str, optional
        Comment text for the top of the file.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    from crforge import atomic

    text = dumps_tables(obj, header=header) if isinstance(obj, Mapping) else dumps_toml(obj, header=header)
    atomic.write_text(path, text)
    logger.debug("wrote config %s", path)
    return Path(path)
