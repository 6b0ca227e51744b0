"""Logging setup for the ``tether`` command: errors and lifecycle to stderr, access to stdout.

Library code only ever calls ``logging.getLogger("tether.*")``; this module is the
one place that attaches handlers, and only the CLI (in the supervisor) and
``worker_main`` (in each worker) call it, with the same settings, so every process
of a service logs alike.

Three layers, each optional, applied in this order (see docs/logging.md):

1. tether's own handlers, in the ``--log-format`` (``text`` or ``json``);
2. ``--access-log-format``, a %-style format over the access record's fields;
3. ``--log-config FILE`` (dictConfig as JSON or YAML, or an INI fileConfig), which
   may replace or extend anything above.
"""

from __future__ import annotations

import configparser
import datetime
import importlib
import json
import logging
import logging.config
import os
import sys
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from tether.config import ServerConfig

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

#: --log-format values
LOG_FORMATS: Final = ("text", "json")

#: The fields every access record carries as attributes (logging ``extra``) when a
#: handler may want them: ``%(status)s`` in a format, or keys of a JSON line.
ACCESS_FIELDS: Final = ("client", "method", "path", "status", "bytes", "duration",
                        "deadline", "cancel")

_TEXT_FORMAT: Final = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
_TEXT_ACCESS_FORMAT: Final = "%(asctime)s [%(process)d] %(message)s"
#: LogRecord attributes that are not extras (what JsonFormatter leaves out)
_RECORD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class LogConfigError(Exception):
    """A --log-config file or --access-log-format that cannot be used (a usage error)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``pid``, ``exception`` when there is one, and every extra field the
    record carries (an access line's client, method, path, status, bytes, duration,
    deadline and cancel). Usable from a --log-config file as
    ``"()": "tether.logs.JsonFormatter"``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def configure_for(config: ServerConfig) -> None:
    """:func:`configure_logging` with a service's settings (supervisor and workers)."""
    configure_logging(config.log_level, access_log=config.access_log,
                      log_format=config.log_format,
                      access_log_format=config.access_log_format,
                      log_config=config.log_config)


def configure_logging(
    level: str,
    *,
    access_log: bool = True,
    log_format: str = "text",
    access_log_format: str | None = None,
    log_config: str | None = None,
) -> None:
    """Attach tether's handlers (stderr for errors and lifecycle, stdout for access
    lines), then apply ``log_config`` on top. Raises :class:`LogConfigError` when the
    access format or the file cannot be used."""
    json_lines = log_format == "json"
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger("tether")
    root.handlers[:] = [errors]
    root.setLevel(LEVELS[level])
    root.propagate = False

    access = logging.getLogger("tether.access")
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(access_formatter(access_log_format, json_lines))
    access.handlers[:] = [out]
    access.propagate = False
    access.setLevel(LEVELS[level] if access_log else logging.CRITICAL + 1)
    if log_config is not None:
        apply_log_config(log_config)


def access_formatter(access_log_format: str | None, json_lines: bool) -> logging.Formatter:
    """The access handler's formatter: JSON, the user's format, or tether's line."""
    if json_lines:
        return JsonFormatter()
    if access_log_format is None:
        return logging.Formatter(_TEXT_ACCESS_FORMAT)
    formatter = logging.Formatter(access_log_format)
    sample = logging.LogRecord("tether.access", logging.INFO, "", 0, "sample", (), None)
    sample.__dict__.update(client="127.0.0.1:5000", method="GET", path="/", status=200,
                           bytes=0, duration=0.0, deadline=None, cancel=None)
    try:
        formatter.format(sample)  # an unknown field fails here, not on every request
    except (KeyError, ValueError, TypeError) as exc:
        raise LogConfigError(
            f"--access-log-format {access_log_format!r}: cannot format an access line "
            f"({type(exc).__name__}: {exc}); fields are %(name)s of "
            f"{', '.join(ACCESS_FIELDS)} and the standard logging attributes"
        ) from None
    return formatter


def apply_log_config(path: str) -> None:
    """Apply a logging configuration file, chosen by extension as uvicorn does:
    ``.json`` and ``.yaml``/``.yml`` are dictConfig, anything else is an INI
    fileConfig. Loggers that exist already (tether's) stay enabled unless the file
    says ``disable_existing_loggers``."""
    if not os.path.isfile(path):
        raise LogConfigError(f"--log-config: no such file {path}")
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                _dict_config(json.load(f), path)
        elif path.endswith((".yaml", ".yml")):
            _dict_config(_load_yaml(path), path)
        else:
            _file_config(path)
    except LogConfigError:
        raise
    except (OSError, ValueError, TypeError, AttributeError, ImportError, KeyError,
            configparser.Error) as exc:
        # dictConfig wraps most faults in ValueError naming the bad entry; fileConfig
        # raises KeyError for a missing section: say which file, not a traceback.
        raise LogConfigError(f"--log-config {path}: {type(exc).__name__}: {exc}") from None


def _dict_config(config: object, path: str) -> None:
    if not isinstance(config, dict):
        raise LogConfigError(f"--log-config {path}: expected a mapping (dictConfig), "
                             f"got {type(config).__name__}")
    config.setdefault("disable_existing_loggers", False)
    logging.config.dictConfig(config)


def _file_config(path: str) -> None:
    try:
        logging.config.fileConfig(path, disable_existing_loggers=False)
    except KeyError as exc:  # fileConfig's way of saying a section or option is missing
        raise LogConfigError(
            f"--log-config {path}: not a usable INI logging file: missing section or "
            f"option {exc} (JSON and YAML files need a .json, .yaml or .yml name)"
        ) from None


def _load_yaml(path: str) -> object:
    try:
        # imported by name: PyYAML is optional, and its stubs are not a dependency
        yaml = importlib.import_module("yaml")
    except ImportError:
        raise LogConfigError(
            f"--log-config {path}: a YAML file needs PyYAML (pip install pyyaml); "
            "or give the same configuration as .json"
        ) from None
    with open(path, encoding="utf-8") as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise LogConfigError(f"--log-config {path}: invalid YAML: {exc}") from None
