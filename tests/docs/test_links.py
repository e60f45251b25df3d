"""Every relative link of README.md and docs/*.md points to a file that
exists, and, when it names an anchor (`page.md#heading`, `#heading`) in a
markdown file, to a heading of that file, by GitHub's rule for heading ids.
Links in code (fenced blocks, `inline`) are not links; absolute URLs
(https:, mailto:) are not checked."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!\!)\[[^\]\n]*\]\(([^)\s]+)\)")


def prose(text):
    """The text with code blocks and inline code blanked (line numbers kept)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return INLINE_CODE.sub("", text)


def slug(heading):
    """GitHub's id of a heading: the rendered text (code spans' content, a
    link's text), lower-cased, without punctuation, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    """The heading ids of a markdown file (a repeated one gets -1, -2 …)."""
    seen, out = {}, set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", prose_keep_code(path.read_text()), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def prose_keep_code(text):
    """The text without fenced blocks (a `# comment` in a shell block is not
    a heading); inline code is kept (it is part of a heading's id)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def links(path):
    """(line, target) of every relative link of a page."""
    text = prose(path.read_text())
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …
            continue
        yield text.count("\n", 0, m.start()) + 1, target


def broken(path):
    bad = []
    for line, target in links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        where = f"{path.relative_to(ROOT)}:{line}: ({target})"
        if not dest.exists():
            bad.append(f"{where}: {file} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    bad = broken(page)
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_broken_links_are_caught(tmp_path):
    """A missing file and a missing heading are both reported."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: yes\n")
    page.write_text("# Page\n\n[ok](other.md#a-code-heading-yes) [ok](#page)\n"
                    "[gone](missing.md)\n[bad anchor](other.md#nope)\n`[in code](missing2.md)`\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        bad = broken(page)
    finally:
        ROOT = saved
    assert len(bad) == 2 and "missing.md" in bad[0] and "#nope" in bad[1], bad


def test_pages_are_linked_from_the_readme():
    """Every docs page is reachable from the README."""
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(ROOT / "README.md")}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"
