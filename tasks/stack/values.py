"""What a value may hold to stand on one line of a rendered config file.

Every value comes from config, paths or the environment; a newline in one would start a line of
its own (in supervisord.conf, a `[program:...]` section that runs anything). Such values are
refused with the setting they are in, and supervisord's own syntax is escaped."""

from __future__ import annotations

import re

from tasks.stack.errors import StackError

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(value: str, what: str) -> str:
    """`value` if it holds no control character (newline, carriage return, tab, ...)."""
    if CONTROL.search(value):
        raise StackError(
            f"{what}: {value!r} holds a control character (a newline, say); each setting of the "
            "stack's config files is one line: fix the value in the config, path or environment"
        )
    return value


def conf_value(value: str, what: str) -> str:
    """A value for one line of supervisord.conf: one line, no comment, `%` as `%%`."""
    one_line(value, what)
    if re.search(r"\s[;#]", value):
        raise StackError(
            f"{what}: {value!r} holds a space before ; or #, which starts a comment in "
            "supervisord.conf; fix the value in the config, path or environment"
        )
    return value.replace("%", "%%")


def quote(part: str) -> str:
    """One argument of `command=`, which supervisord splits as a POSIX shell would."""
    if re.fullmatch(r"[\w@%+=:,./-]+", part):
        return part
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_pair(key: str, value: str, where: str = "supervisord environment") -> str:
    """`KEY="value"` for `environment=`. supervisord's parser keeps a quoted value as it is, with
    no escapes, and strips quotes at its ends: a value with both quote kinds, or one that starts
    or ends with a quote, cannot be written and is refused."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise StackError(f"{where}: {key!r} is not a variable name")
    value = conf_value(value, f"{where} environment {key}")
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        raise StackError(f"{where}: the value of {key} starts or ends with a quote")
    mark = '"' if '"' not in value else "'"
    if mark in value:
        raise StackError(f"{where}: the value of {key} holds both kinds of quote")
    return f"{key}={mark}{value}{mark}"
