"""The README and the docs pages, as the tests read them: their code blocks, headings and links.

A fenced block is run by the walkthrough test when its language is `bash`, unless the
line right before its fence is a marker saying why not:

    <!-- not run: the test starts its own server instead -->
    ```bash
    make run
    ```
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->$")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
# [text](target) and ![alt](target), but not inside code spans (removed first).
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
# The languages whose blocks are commands to type; only `bash` is run, so no other is allowed.
SHELL_LANGUAGES = {"sh", "shell", "console", "zsh", "shell-session"}


def pages() -> list[Path]:
    """README.md, then every page of docs/ by name."""
    return [README, *sorted(DOCS.glob("*.md"))]


def name_of(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    not_run: str | None  # the reason given by the marker before it, if any

    @property
    def where(self) -> str:
        return f"{name_of(self.page)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.language == "bash" and self.not_run is None


def blocks(page: Path) -> list[Block]:
    """Every fenced block of `page`, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        language = opening["info"].split()[0] if opening["info"].strip() else ""
        previous = lines[index - 1].strip() if index > 0 else ""
        marker = NOT_RUN.match(previous)
        body = []
        end = index + 1
        while end < len(lines) and not lines[end].startswith(fence):
            body.append(lines[end])
            end += 1
        found.append(
            Block(page, index + 1, language, "\n".join(body) + "\n", marker and marker["reason"])
        )
        index = end + 1
    return found


def prose(page: Path) -> list[tuple[int, str]]:
    """The lines of `page` outside code blocks, with their 1-based numbers."""
    inside: str | None = None
    kept = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        opening = FENCE.match(line)
        if inside is None and opening:
            inside = opening["fence"]
        elif inside is not None and line.startswith(inside):
            inside = None
        elif inside is None:
            kept.append((number, line))
    return kept


def slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    title = CODE_SPAN.sub(lambda match: match[0].strip("`"), title)
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link keeps its text
    kept = "".join(
        char
        for char in title.lower()
        if char in " -_" or unicodedata.category(char)[0] in ("L", "N")
    )
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of `page`'s headings, numbered as GitHub numbers repeated ones."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose(page):
        heading = HEADING.match(line)
        if heading is None:
            continue
        base = slug(heading["title"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def headings(page: Path) -> list[tuple[int, str]]:
    """(level, title) of each heading of `page`, in order."""
    found = []
    for _, line in prose(page):
        heading = HEADING.match(line)
        if heading:
            found.append((len(heading["hashes"]), heading["title"]))
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image of `page`, outside code."""
    found = []
    for number, line in prose(page):
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            found.append((number, match["target"]))
    return found
