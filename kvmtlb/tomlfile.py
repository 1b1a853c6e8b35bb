"""Reading a user's TOML file (a scenario or a workload) with errors that name the line.

tomllib gives values without positions, so `Lines` finds the line a key or a table stands on;
`loads` turns tomllib's error into the caller's error type with a line number; `check_header`
validates what every such file starts with (only known top-level keys, a name, a doc string).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# Builds the caller's error from (line, message, fix).
Err = Callable[[int, str, str], Exception]


class Lines:
    """Finds the line a key or a table header stands on (1-based; 0 if not found)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def section(self, name: str) -> int:
        for i, line in enumerate(self.lines):
            if line.strip().startswith(f"[{name}]"):
                return i + 1
        return 0

    def key(self, section: str | None, key: str) -> int:
        """The line of `key` in table `section` (None: the top level), else the table's line."""
        start = self.section(section) if section else 0
        if section and not start:
            return 0
        pat = re.compile(rf'^\s*"?{re.escape(key)}"?\s*=')
        for i in range(start, len(self.lines)):
            line = self.lines[i]
            if re.match(r"^\s*\[[A-Za-z_]", line):  # the next table header
                break
            if pat.match(line):
                return i + 1
        return start


def loads(text: str, err: Err, fix: str) -> dict[str, Any]:
    """Parse `text`; a syntax error becomes `err(line, message, fix)`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        line = int(m.group(1)) if m else _unclosed_line(text.splitlines())
        raise err(line, f"not valid TOML: {e}", fix) from None


def _unclosed_line(lines: list[str]) -> int:
    """tomllib reports an unterminated multi-line string "at end of document": name the line
    where the last unclosed one opens instead (or the last line)."""
    opened = 0
    for n, line in enumerate(lines, 1):
        for _ in range(line.count('"""') + line.count("'''")):
            opened = 0 if opened else n
    return opened or len(lines)


def check_header(
    data: dict[str, Any], lines: Lines, allowed: Sequence[str], err: Err, example: str
) -> tuple[str, str]:
    """Only `allowed` top-level keys and tables; a valid `name`; `doc` a string. Returns both."""
    for key in data:
        if key not in allowed:
            raise err(
                lines.key(None, key) or lines.section(key),
                f"unknown top-level key or table {key!r}",
                f"use only {', '.join(allowed)}",
            )
    name = data.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise err(
            lines.key(None, "name"),
            f"bad or missing name {name!r}",
            f'add name = "{example}" (lowercase letters, digits, dashes)',
        )
    doc = data.get("doc", "")
    if not isinstance(doc, str):
        raise err(lines.key(None, "doc"), "doc must be a string", 'doc = "..."')
    return name, doc
