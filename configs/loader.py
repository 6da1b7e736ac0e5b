"""YAML file plus `key=value` overrides -> a typed, frozen RunConfig; and back to a plain dict."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import yaml

from configs.schema import ConfigError, RunConfig

_NONE = type(None)


def load(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML config, apply `dotted.key=value` overrides, and build the typed RunConfig.

    Unknown keys (in the file or an override) raise ConfigError naming the key and where it was.
    Override values are parsed as YAML scalars, then checked against the field's type; a value for
    a string field is taken verbatim.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    try:
        return _build(RunConfig, raw, "", str(path))
    except ConfigError as e:
        if str(path) in str(e):
            raise
        raise ConfigError(f"{path}: {e}") from e


def to_dict(cfg: Any) -> dict:
    """The config as nested plain dicts and lists (YAML- and `torch.load(weights_only=True)`-safe)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


def from_dict(mapping: dict, where: str = "config") -> RunConfig:
    """Rebuild a RunConfig from `to_dict`'s output (a checkpoint's `config`)."""
    return _build(RunConfig, mapping, "", where)


def dump(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def field_type(dotted: str) -> Any:
    """The declared type of a dotted key; ConfigError if no such key exists."""
    cls: Any = RunConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            known = ", ".join(_dotted(cls, parts[:i]))
            raise ConfigError(f"unknown key '{dotted}' (known keys here: {known})")
        tp = hints[part]
        if i == len(parts) - 1:
            return tp
        cls = _dataclass_in(tp)
        if cls is None:
            raise ConfigError(f"unknown key '{dotted}': '{'.'.join(parts[:i + 1])}' has no sub-keys")
    raise AssertionError("unreachable")


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected key=value (dotted keys for nested ones)")
    tp = field_type(key)
    value = _parse_text(text, tp, key)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}   # a section given as null in the file (e.g. distill.geom) starts from defaults
        node = node[part]
    node[parts[-1]] = value


def _parse_text(text: str, tp: Any, key: str) -> Any:
    # A field that takes a string takes the text verbatim, unless it also takes a list and the text is
    # one in YAML's flow form (data.shards=[a,b]).
    if _accepts_str(tp) and text not in ("null", "~", "") and not (_accepts_list(tp) and text.lstrip().startswith("[")):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}={text}: not a valid value: {e}") from e


def _build(cls: type, mapping: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, found {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        if key not in hints:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known keys in {where}: {', '.join(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in mapping:
            if required and dataclasses.is_dataclass(hints[f.name]):
                mapping = {**mapping, f.name: {}}  # so that the error names the missing key inside it
            elif required:
                raise ConfigError(f"{source}: missing required key '{key}'")
            else:
                continue
        kwargs[f.name] = _coerce(mapping[f.name], hints[f.name], key, source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{source}: key '{key}': expected {_describe(tp)}, found {value!r}")
    if origin in (Union, types.UnionType):
        if value is None:
            if _NONE in args:
                return None
            raise bad
        inner = [a for a in args if a is not _NONE]
        if len(inner) == 1:
            return _coerce(value, inner[0], key, source)
        # Several types (data.shards: a string or a list of them): the first that takes the value.
        assert not any(dataclasses.is_dataclass(a) for a in inner), f"unsupported union type for {key}: {tp}"
        for option in inner:
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        raise bad
    if value is None:
        raise bad
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    if origin is Literal:
        if value not in args:
            raise bad
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        # PyYAML reads 5e-4 (no dot) as a string; accept any text float() reads.
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise AssertionError(f"unsupported config type for {key}: {tp}")


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is _NONE else _describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _accepts_str(tp: Any) -> bool:
    if tp is str:
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_accepts_str(a) for a in typing.get_args(tp))
    return False


def _accepts_list(tp: Any) -> bool:
    if typing.get_origin(tp) is tuple:
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_accepts_list(a) for a in typing.get_args(tp))
    return False


def _dataclass_in(tp: Any) -> Any:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        for a in typing.get_args(tp):
            if dataclasses.is_dataclass(a):
                return a
    return None


def _dotted(cls: Any, parts: list[str]) -> list[str]:
    prefix = "".join(p + "." for p in parts)
    return [prefix + f.name for f in dataclasses.fields(cls)]
