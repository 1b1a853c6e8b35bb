"""Errors shared by every layer: a user's file that does not load (scenarios, workloads), and
how an exception raised by a user's policy is reported (where it happened, no traceback)."""

from __future__ import annotations

import traceback


class InputFileError(Exception):
    """An input error in a file: the file, the line (0 if unknown) and the fix."""

    def __init__(self, path: str, line: int, message: str, fix: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        self.fix = fix
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}\n  fix: {fix}")


def where(e: BaseException) -> str:
    """`Type: message (at FILE:LINE in FUNCTION)` for the innermost frame of `e`: enough to find
    the bug in a policy without printing a traceback."""
    text = "".join(traceback.format_exception_only(e)).strip()
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        f = frames[-1]
        text += f" (at {f.filename}:{f.lineno} in {f.name})"
    return text
