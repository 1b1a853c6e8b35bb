"""Driving the distribution's Chromium headless from the tests, with the standard library only.

`--dump-dom` prints the DOM after the page's scripts ran, `--screenshot` writes a PNG. Each call
gets its own profile directory, so parallel test workers never share one. Key presses are
simulated by a script appended to a copy of the page (the viewer's handlers do not check
`isTrusted`), which keeps the tests free of a DevTools client.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MISSING = (
    "no Chromium found: the browser tests need the distribution's chromium package "
    "(apt-get install chromium; .ci/run installs it) or KVMTLB_CHROMIUM=/path/to/chrome"
)
TIMEOUT = 60


def binary() -> str | None:
    given = os.environ.get("KVMTLB_CHROMIUM")
    if given:
        return given if Path(given).exists() else None
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require() -> str:
    """The Chromium binary, or skip (fail under KVMTLB_REQUIRE_BROWSER=1, as in CI)."""
    found = binary()
    if found is None:
        if os.environ.get("KVMTLB_REQUIRE_BROWSER") == "1":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


def _run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="kvmtlb-chromium-") as profile:
        cmd = [
            require(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-extensions",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, check=False)


def dump_dom(page: Path, fragment: str = "", keys: list[str] | None = None) -> str:
    """The DOM of `page` (opened at `fragment`) after its scripts ran, and after `keys` were
    pressed in order."""
    target = page
    if keys:
        target = page.with_name(page.stem + ".keys.html")
        presses = "".join(
            f"document.dispatchEvent(new KeyboardEvent('keydown', {{key: {k!r}}}));" for k in keys
        )
        target.write_text(page.read_text() + f"<script>{presses}</script>\n")
    out = _run(["--dump-dom", target.resolve().as_uri() + fragment])
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    return out.stdout.decode()


def screenshot(page: Path, png: Path, fragment: str = "", size: str = "1800,1000") -> Path:
    out = _run([f"--screenshot={png}", f"--window-size={size}", page.resolve().as_uri() + fragment])
    assert out.returncode == 0 and png.exists(), out.stderr.decode(errors="replace")[-2000:]
    return png


# -- a small DOM over the dumped HTML ------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Node] = []
        self.parts: list[str | Node] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text for p in self.parts)

    def walk(self) -> list[Node]:
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out

    def find(self, tag: str = "", cls: str = "", **attrs: str) -> list[Node]:
        """Descendants (and self) with this tag, class and attributes (`data_step` for
        data-step)."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            n
            for n in self.walk()
            if (not tag or n.tag == tag)
            and (not cls or cls in n.classes)
            and all(n.attrs.get(k) == v for k, v in want.items())
        ]

    def by_id(self, ident: str) -> Node:
        found = self.find(id=ident)
        assert len(found) == 1, f"{len(found)} elements with id {ident!r}"
        return found[0]


def parse(html: str) -> Node:
    from html.parser import HTMLParser

    root = Node("#document", {}, None)

    class Builder(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.cur = root

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
            self.cur.children.append(node)
            self.cur.parts.append(node)
            if tag not in VOID:
                self.cur = node

        def handle_endtag(self, tag: str) -> None:
            n: Node | None = self.cur
            while n is not None and n.tag != tag:
                n = n.parent
            if n is not None and n.parent is not None:
                self.cur = n.parent

        def handle_data(self, data: str) -> None:
            self.cur.parts.append(data)

    Builder().feed(html)
    return root
