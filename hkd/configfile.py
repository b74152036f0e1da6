"""Reading config files (run configs, distill configs): plain data from YAML or JSON, bounded.

YAML anchors and aliases (``&a`` / ``*a``, and the ``<<`` merges built on them) are
refused while the document is composed, before any value is built: an alias lets a
few hundred bytes stand for gigabytes (the "billion laughs"), and no HKD config needs one.
Error messages quote at most :data:`QUOTE_LIMIT` characters of a value (:func:`quote`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

QUOTE_LIMIT = 200


class ConfigFileError(ValueError):
    """A config file or value could not be read as plain data; the message says where and why."""


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters (with the full length) for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class _PlainLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases as it composes the document."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise yaml.composer.ComposerError(
                None, None, f"YAML {kind}{event.anchor} is not accepted in a config (anchors and aliases can "
                            "expand a small file without bound); write the value out", event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str) -> Any:
    """Plain data from YAML text without anchors/aliases (:class:`yaml.YAMLError` otherwise)."""
    return yaml.load(text, Loader=_PlainLoader)  # noqa: S506  (a SafeLoader subclass)


def read_config_file(path: str | Path) -> Any:
    """The plain data of a YAML (or ``.json``) config file.

    Raises:
        ConfigFileError: the file is missing, a folder, not UTF-8 text, not valid YAML/JSON,
            or uses YAML anchors/aliases — one sentence naming the file.
    """
    path = Path(path)
    fmt = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{path}: a folder, not a config file ({fmt})") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a config is "
                              f"{fmt} text") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return json.loads(text) if fmt == "JSON" else parse_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{path}: not valid {fmt}: {_first_lines(exc)}") from None


def parse_value(text: str, where: str) -> Any:
    """A ``--set KEY=VALUE`` value as YAML plain data (``50``, ``[1, 2]``, ``null``, a path)."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{where}: {quote(text)} is not a valid YAML value ({_first_lines(exc, 1)}); quote "
                              "a string, close a list") from None


def _first_lines(exc: Exception, lines: int = 4) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines()[:lines] if line.strip())
    return text[:400]
