"""Errors shared by every layer that reads a user's file (scenarios, workloads)."""

from __future__ import annotations


class InputFileError(Exception):
    """An input error in a file: the file, the line (0 if unknown) and the fix."""

    def __init__(self, path: str, line: int, message: str, fix: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        self.fix = fix
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}\n  fix: {fix}")
