"""Reading a user's TOML file (a scenario or a workload) with errors that name the line.

tomllib gives values without positions, so `Lines` scans the document (after tomllib accepted it)
for the line every key stands on: table headers, dotted keys, keys of inline tables, arrays. Only
a line feed ends a line, as in TOML and in every editor's line count: a U+2028, a NEL or a form
feed inside a string does not (str.splitlines() would count them). `Lines.string_lines` maps each
character of a string value back to its line, through escapes (`\\n`), line-ending backslashes and
the newline trimmed after an opening `\"\"\"`, so the ops of a thread report the line they stand on.

`read` reads a file as UTF-8 (an undecodable byte is an error naming its line); `loads` turns
tomllib's errors, and its recursion on deeply nested arrays, into the caller's error type with a
line number; `check_header` validates what every such file starts with (only known top-level keys,
a name, a doc string).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
MAX_NESTING = 32  # arrays and inline tables in input files: far deeper than any file needs

# Builds the caller's error from (line, message, fix).
Err = Callable[[int, str, str], Exception]

Key = tuple[str | int, ...]


def read(path: str | Path, err: Err, what: str) -> str:
    """The text of `path`, decoded as UTF-8; `what` names the kind of file for the fix."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise err(0, f"cannot read the file ({e.strerror})", f"give the path of {what}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise err(
            line,
            f"not UTF-8: byte {data[e.start]:#04x} at column {column} cannot be decoded",
            "save the file as UTF-8 text (TOML files are UTF-8)",
        ) from None


def split_lines(text: str) -> list[str]:
    """The lines of `text` as TOML counts them: only LF (or CRLF) ends a line."""
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


class Lines:
    """Finds the line a key or a table stands on (1-based; 0 if not found)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = split_lines(text)
        self._keys: dict[Key, int] = {}
        self._strings: dict[Key, int] = {}  # key -> offset of the string's opening quote
        try:
            _Scanner(text, self._keys, self._strings).document()
        except (IndexError, ValueError, RecursionError):  # not TOML tomllib accepted
            self._keys.clear()
            self._strings.clear()

    def section(self, name: str) -> int:
        """The line of table `name`: its header, or the key that opens it (an inline table or
        the first dotted key)."""
        return self._keys.get((name,), 0)

    def key(self, section: str | None, key: str) -> int:
        """The line of `key` in table `section` (None: the top level), else the table's line."""
        path: Key = (section, key) if section else (key,)
        line = self._keys.get(path)
        if line is not None:
            return line
        return self.section(section) if section else 0

    def string_lines(self, section: str, key: str, value: str) -> list[int] | None:
        """For the string `value` of `key` in `section`: the line each character of it stands on
        (and one more entry for the end), or None when the file does not hold it as scanned."""
        start = self._strings.get((section, key))
        if start is None:
            return None
        try:
            decoded, lines = _decode_string(self.text, start)
        except (IndexError, ValueError):
            return None
        return lines if decoded == value else None


def _decode_string(text: str, pos: int) -> tuple[str, list[int]]:
    """Decode the TOML string starting at `pos`; returns it and the line of each character."""
    line = text.count("\n", 0, pos) + 1
    out: list[str] = []
    where: list[int] = []
    if text.startswith(('"""', "'''"), pos):
        quote = text[pos : pos + 3]
        literal = quote == "'''"
        i = pos + 3
        if text.startswith("\r\n", i):
            i += 2
            line += 1
        elif text.startswith("\n", i):
            i += 1
            line += 1
        while True:
            if text.startswith(quote, i) and not text.startswith(quote, i + 1):
                # up to two quotes may end the content right before the closing ones
                break
            c = text[i]
            if c == "\n":
                out.append("\n")
                where.append(line)
                line += 1
                i += 1
            elif c == "\r" and text.startswith("\r\n", i):
                i += 1
            elif c == "\\" and not literal:
                j = i + 1
                while text[j] in " \t\r":
                    j += 1
                if text[j] == "\n":  # a line-ending backslash: trim whitespace and newlines
                    while text[j] in " \t\r\n":
                        line += text[j] == "\n"
                        j += 1
                    i = j
                else:
                    ch, i = _escape(text, i)
                    out.append(ch)
                    where.append(line)
            else:
                out.append(c)
                where.append(line)
                i += 1
    else:
        quote = text[pos]
        i = pos + 1
        while text[i] != quote:
            if text[i] == "\\" and quote == '"':
                ch, i = _escape(text, i)
            else:
                ch, i = text[i], i + 1
            out.append(ch)
            where.append(line)
    where.append(line)
    return "".join(out), where


_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def _escape(text: str, i: int) -> tuple[str, int]:
    """The escape sequence at text[i] (a backslash): its character and the offset after it."""
    c = text[i + 1]
    if c in _ESCAPES:
        return _ESCAPES[c], i + 2
    if c in "uU":
        n = 4 if c == "u" else 8
        return chr(int(text[i + 2 : i + 2 + n], 16)), i + 2 + n
    raise ValueError(f"bad escape \\{c}")


_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\n]*")


class _Scanner:
    """Walks a TOML document tomllib accepted, recording the line of every key path."""

    def __init__(self, text: str, keys: dict[Key, int], strings: dict[Key, int]) -> None:
        self.text = text
        self.i = 0
        self.line = 1
        self.keys = keys
        self.strings = strings

    def record(self, path: Key) -> None:
        for n in range(1, len(path) + 1):
            self.keys.setdefault(path[:n], self.line)

    def skip(self, newlines: bool) -> None:
        t = self.text
        while self.i < len(t):
            c = t[self.i]
            if c in " \t":
                self.i += 1
            elif c == "#":
                while self.i < len(t) and t[self.i] != "\n":
                    self.i += 1
            elif newlines and c in "\r\n":
                self.line += c == "\n"
                self.i += 1
            else:
                break

    def document(self) -> None:
        t = self.text
        table: Key = ()
        while True:
            self.skip(newlines=True)
            if self.i >= len(t):
                return
            if t.startswith("[[", self.i):
                self.i += 2
                table = self.key_path()
                self.record(table)
                self.i = t.index("]]", self.i) + 2
            elif t[self.i] == "[":
                self.i += 1
                table = self.key_path()
                self.record(table)
                self.i = t.index("]", self.i) + 1
            else:
                path = table + self.key_path()
                self.record(path)
                self.skip(newlines=False)
                if t[self.i] != "=":
                    raise ValueError("expected =")
                self.i += 1
                self.value(path, 0)

    def key_path(self) -> Key:
        t = self.text
        parts: list[str | int] = []
        while True:
            self.skip(newlines=False)
            c = t[self.i]
            if c == '"' or c == "'":
                s, end = _single_line_string(t, self.i)
                parts.append(s)
                self.i = end
            else:
                m = _BARE.match(t, self.i)
                if not m:
                    raise ValueError("expected a key")
                parts.append(m.group())
                self.i = m.end()
            self.skip(newlines=False)
            if self.i < len(t) and t[self.i] == ".":
                self.i += 1
                continue
            return tuple(parts)

    def value(self, path: Key, depth: int) -> None:
        if depth > 1000:
            raise ValueError("nested too deep")
        t = self.text
        self.skip(newlines=False)
        c = t[self.i]
        if c in "\"'":
            self.strings.setdefault(path, self.i)
            if t.startswith(c * 3, self.i):
                end = self.i + 3
                while True:
                    end = t.index(c * 3, end)
                    if c == '"' and _escaped(t, end):
                        end += 1
                        continue
                    break
                while t.startswith(c, end + 3):  # up to two quotes before the closing ones
                    end += 1
                self.line += t.count("\n", self.i, end + 3)
                self.i = end + 3
            else:
                self.i = _single_line_string(t, self.i)[1]
        elif c == "[":
            self.i += 1
            n = 0
            while True:
                self.skip(newlines=True)
                if t[self.i] == "]":
                    self.i += 1
                    return
                self.value((*path, n), depth + 1)
                n += 1
                self.skip(newlines=True)
                if t[self.i] == ",":
                    self.i += 1
        elif c == "{":
            self.i += 1
            while True:
                self.skip(newlines=True)
                if t[self.i] == "}":
                    self.i += 1
                    return
                key = (*path, *self.key_path())
                self.record(key)
                self.skip(newlines=False)
                self.i += 1  # '='
                self.value(key, depth + 1)
                self.skip(newlines=True)
                if t[self.i] == ",":
                    self.i += 1
        else:
            m = _SCALAR.match(t, self.i)
            assert m is not None
            self.i = m.end()


def _escaped(t: str, i: int) -> bool:
    """Whether the character at t[i] is escaped by an odd run of backslashes."""
    n = 0
    while t[i - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


def _single_line_string(t: str, i: int) -> tuple[str, int]:
    """A one-line basic or literal string at t[i]: its raw content and the offset after it."""
    q = t[i]
    j = i + 1
    while t[j] != q:
        if t[j] == "\n":
            raise ValueError("unterminated string")
        j += 2 if q == '"' and t[j] == "\\" else 1
    raw = t[i + 1 : j]
    if q == '"':
        raw = _decode_string(t, i)[0]
    return raw, j + 1


def loads(text: str, err: Err, fix: str) -> dict[str, Any]:
    """Parse `text`; a syntax error becomes `err(line, message, fix)`."""
    try:
        data = tomllib.loads(text)
        deep = _depth(data) > MAX_NESTING + 1  # the document itself is a table
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        line = int(m.group(1)) if m else _unclosed_line(split_lines(text))
        raise err(line, f"not valid TOML: {e}", fix) from None
    except RecursionError:
        deep = True
    if deep:
        raise err(
            _deep_line(text),
            f"arrays or inline tables nested more than {MAX_NESTING} deep",
            "nest lists at most a few levels (input files need one)",
        )
    return data


def _deep_line(text: str) -> int:
    """The line where brackets first nest more than MAX_NESTING deep (outside strings and
    comments), or 1."""
    depth, line, i, n = 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "\"'":
            j = text.find(c, i + 1)
            while j > 0 and c == '"' and _escaped(text, j):
                j = text.find(c, j + 1)
            if j < 0:
                break
            line += text.count("\n", i, j)
            i = j + 1
            continue
        elif c in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return line
        elif c in "]}":
            depth -= 1
        i += 1
    return 1


def _depth(value: Any) -> int:
    """How deeply lists and tables nest in `value` (a scalar: 0)."""
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _unclosed_line(lines: list[str]) -> int:
    """tomllib reports an unterminated multi-line string "at end of document": name the line
    where the last unclosed one opens instead (or the last line)."""
    opened = 0
    for n, line in enumerate(lines, 1):
        for _ in range(line.count('"""') + line.count("'''")):
            opened = 0 if opened else n
    return opened or len(lines)


def shown(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters for an error message."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<a deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_header(
    data: dict[str, Any], lines: Lines, allowed: Sequence[str], err: Err, example: str
) -> tuple[str, str]:
    """Only `allowed` top-level keys and tables; a valid `name`; `doc` a string. Returns both."""
    for key in data:
        if key not in allowed:
            raise err(
                lines.key(None, key) or lines.section(key),
                f"unknown top-level key or table {shown(key)}",
                f"use only {', '.join(allowed)}",
            )
    name = data.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise err(
            lines.key(None, "name"),
            f"bad or missing name {shown(name)}" if "name" in data else "missing name",
            f'add name = "{example}" (lowercase letters, digits, dashes)',
        )
    doc = data.get("doc", "")
    if not isinstance(doc, str):
        raise err(lines.key(None, "doc"), "doc must be a string", 'doc = "..."')
    return name, doc
