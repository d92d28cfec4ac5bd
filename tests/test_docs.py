"""The README and docs/ stay true to the code: every test they cite exists, every module has a row in the
layout table, every link between them leads somewhere, and the README stays short enough to read."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITED = re.compile(r"`((?:tests/test_\w+\.py)(?:::[\w.]+)?|(?:\.\.\.)?_?test_\w+(?:_\.\.\.)?|\.\.\._\w+_\.\.\.)`")


def _tests() -> dict[str, set[str]]:
    """Per test file, the test functions defined in it."""
    return {p.name: set(re.findall(r"^\s*(?:async )?def (test_\w+)", p.read_text(), re.M))
            for p in (ROOT / "tests").glob("test_*.py")}


def _citations() -> list[tuple[Path, str]]:
    return [(page, m.group(1)) for page in PAGES for m in CITED.finditer(page.read_text())]


def test_every_test_the_docs_cite_exists():
    tests = _tests()
    every = set().union(*tests.values())
    missing = []
    for page, cited in _citations():
        if cited.startswith("tests/"):
            file, _, name = cited[len("tests/"):].partition("::")
            ok = file in tests and (not name or name in tests[file])
        elif "..." in cited:
            part = cited.replace("...", "").strip("_")
            ok = any(part in name for name in every)
        else:
            ok = cited in every
        if not ok:
            missing.append(f"{page.relative_to(ROOT)}: {cited}")
    assert not missing, "cited but not found:\n" + "\n".join(missing)


def test_the_citation_check_sees_the_citations():
    """Guards the check above: it must find the README's privacy proofs and the docs' elided names."""
    cited = {c for _, c in _citations()}
    assert "tests/test_gate.py::test_invariant1_press_during_pending_releases_exactly_the_utterance" in cited
    assert any("..." in c for c in cited) and len(cited) > 100


def test_every_module_has_a_row_in_the_layout_table():
    layout = (ROOT / "docs" / "development.md").read_text().split("## Layout", 1)[1]
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "guard").glob("*.py") if p.name != "__init__.py")
    assert [m for m in modules if f"| `{m}` |" not in layout] == []


def test_every_link_between_the_pages_leads_somewhere():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path, _, anchor = target.partition("#")
            if target.startswith(("http://", "https://")) or not path:
                continue
            linked = (page.parent / path).resolve()
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
                if anchor not in slugs:
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_short_and_indexes_every_page_of_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    assert [p.name for p in PAGES[1:] if f"](docs/{p.name})" not in readme] == []
