"""The documentation is checked like code: the contract copy, the links, the examples.

* ``docs/api.md`` must be byte-identical to the shared contract
  ``../shared/spec/API.md`` (beside the repository root, here and in CI), so
  the copy a user reads cannot drift from the one the tests are written
  against.
* No Markdown file of the project links outside the repository, and every
  relative link (and ``#anchor``) points at something that exists.
* Every ```` ```python ```` block of ``docs/guide.md`` and ``README.md`` is a
  complete program: each runs in a fresh interpreter, bounded by a timeout,
  and must exit 0; the guide's run under ``-X dev -W error`` and must write
  nothing to stderr (so an example that leaks a socket fails; the README's
  taste is a fragment that leaves its sockets to the interpreter).  A
  ```` ```text ```` block that directly follows one (blank lines only in
  between) is its exact standard output.  The examples may only use
  loopback addresses.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT.parent / "shared" / "spec" / "API.md"
API_COPY = ROOT / "docs" / "api.md"
GUIDE = ROOT / "docs" / "guide.md"
RUNNABLE_FILES = (GUIDE, ROOT / "README.md")
TIMEOUT = 60  # seconds per example; each needs well under one

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Example:
    path: Path
    line: int
    code: str
    output: str | None  # the text block that follows, if any

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract_examples(path: Path) -> list[Example]:
    """The ```python blocks of *path*, each with the ```text block right after it."""
    text = path.read_text(encoding="utf-8")
    fences = list(_FENCE.finditer(text))
    found = []
    for i, fence in enumerate(fences):
        if fence.group(1).strip() != "python":
            continue
        output = None
        if i + 1 < len(fences):
            after = fences[i + 1]
            between = text[fence.end() : after.start()]
            if after.group(1).strip() == "text" and not between.strip():
                output = after.group(2)
        line = text.count("\n", 0, fence.start()) + 1
        found.append(Example(path, line, fence.group(2), output))
    return found


EXAMPLES = [example for path in RUNNABLE_FILES for example in extract_examples(path)]


# --------------------------------------------------------------------------
# The contract copy


def test_api_copy_is_the_shared_contract() -> None:
    if not SPEC.is_file():
        pytest.skip(f"the shared contract is not beside the repository ({SPEC} is absent)")
    assert API_COPY.read_bytes() == SPEC.read_bytes(), (
        "docs/api.md differs from ../shared/spec/API.md: copy the contract again "
        "(cp ../shared/spec/API.md docs/api.md)"
    )


# --------------------------------------------------------------------------
# Links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    heading = heading.strip().lower()
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        slug = _slug(heading)
        n = 1
        candidate = slug
        while candidate in anchors:  # GitHub numbers repeated headings
            candidate = f"{slug}-{n}"
            n += 1
        anchors.add(candidate)
    return anchors


def _links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_link_leaves_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if path != API_COPY:  # the contract is copied verbatim, whatever it says
        assert "shared/spec" not in text, f"{path.name} points at the shared spec: use docs/api.md"
    for target in _links(path):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.is_relative_to(ROOT), f"{path.name}: {target} leaves the repository"
        assert resolved.exists(), f"{path.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{path.name}: no heading for #{anchor}"


def test_guide_links_the_design_notes_and_the_index_lists_every_document() -> None:
    guide = _links(GUIDE)
    for note in ("api.md", "backends.md", "epoll.md"):
        assert note in guide, f"the guide does not link {note}"
    index = set(_links(ROOT / "docs" / "README.md"))
    for doc in sorted((ROOT / "docs").glob("*.md")):
        if doc.name != "README.md":
            assert doc.name in index, f"docs/README.md does not list {doc.name}"


# --------------------------------------------------------------------------
# Runnable examples


def test_the_guide_has_its_examples() -> None:
    examples = extract_examples(GUIDE)
    assert len(examples) >= 10, [e.name for e in examples]
    # Every example of the guide shows what it prints, so the prose can be checked.
    assert [e.name for e in examples if e.output is None] == []
    text = GUIDE.read_text(encoding="utf-8")
    other = set(re.findall(r"^```(\w+)", text, re.MULTILINE)) - {"python", "text"}
    assert not other, f"fences the test does not run: {other}"


# A quoted IPv4 literal, "localhost", or an IPv6 literal; and ("", port), the wildcard host.
_ADDRESS = re.compile(
    r"""["'](\d{1,3}(?:\.\d{1,3}){3}|localhost|[0-9a-fA-F]*::?[0-9a-fA-F:]*)["']"""
)
_WILDCARD = re.compile(r"""\(\s*(["'])\1\s*,""")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_example_uses_loopback_only(example: Example) -> None:
    for address in _ADDRESS.findall(example.code):
        assert address == "127.0.0.1", f"{example.name} uses {address!r}"
    assert not _WILDCARD.search(example.code), f"{example.name} binds the wildcard address"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_example_runs(example: Example, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example.code, encoding="utf-8")
    strict = example.path == GUIDE
    flags = ["-X", "dev", "-W", "error"] if strict else []
    done = subprocess.run(
        [sys.executable, *flags, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{example.name} failed:\n{done.stderr}"
    if strict:
        assert done.stderr == "", f"{example.name} wrote to stderr:\n{done.stderr}"
    if example.output is not None:
        assert done.stdout == example.output, f"{example.name} printed something else"
