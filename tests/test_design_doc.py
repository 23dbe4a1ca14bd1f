"""Every citation of the design in the code, tests and docs names a section that docs/design.md has.

A citation is a section sign followed by a number ("design §6.1", "docs/design.md §3"), optionally
with rules ("Design §6 rules 1-2" also needs 6.1 and 6.2), or "design.md section N". A section
exists when a Markdown heading of docs/design.md starts with its number, however the heading is
written: "## 6. PPO ...", "### 6.1 Sample ...", "### §6.1 ...", "## Section 6.1: ...". A section
sign inside a paper reference on the same line ("(Ziegler et al. 2019, eq. 2 and §2.2)") is the
paper's and is not checked. This file is not scanned: its examples are not citations.

The metric table of §2.2 and run/metrics.py must also agree: every constant listed, no row for one
that does not exist.
"""

from __future__ import annotations

import re
from pathlib import Path

from rlhfkit.run import metrics

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SCANNED = [
    ("src", "*.py"),
    ("tests", "*.py"),
    ("docs", "*.md"),
    ("configs", "*.yaml"),
    (".", "README.md"),
    (".", "DEVELOPERS.md"),
]

NUMBER = r"\d+(?:\.\d+)*"
SECTION_SIGN = re.compile(rf"§\s*({NUMBER})(?:\s+rules?\s+(\d+)(?:\s*[-–]\s*(\d+))?)?")
SECTION_WORD = re.compile(rf"\bdesign(?:\.md)?\s+section\s+({NUMBER})", re.IGNORECASE)
HEADING = re.compile(rf"^ {{0,3}}#{{1,6}}\s+(?:\*\*)?(?:§\s*|section\s+)?({NUMBER})(?![\d])", re.IGNORECASE)
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _is_paper_reference(before: str) -> bool:
    """Text before a section sign, from the last open parenthesis on: a paper's name, not the design."""
    tail = before[before.rfind("(") + 1 :]
    return "et al" in tail and "design" not in tail.lower()


def citations(line: str) -> list[str]:
    """The design sections one line cites, e.g. ["6", "6.1", "6.2"] for "Design §6 rules 1-2"."""
    found = []
    for match in SECTION_SIGN.finditer(line):
        if _is_paper_reference(line[: match.start()]):
            continue
        section, first, last = match.groups()
        found.append(section)
        if first:
            found += [f"{section}.{rule}" for rule in range(int(first), int(last or first) + 1)]
    found += [match.group(1) for match in SECTION_WORD.finditer(line)]
    return found


def headings(text: str) -> set[str]:
    """Section numbers of the Markdown headings in `text`, outside fenced code blocks."""
    numbers, in_code = set(), False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and (match := HEADING.match(line)):
            numbers.add(match.group(1))
    return numbers


def cited_sections() -> list[tuple[str, str]]:
    """(where, section) for every citation in the scanned files, where = "path:line"."""
    this = Path(__file__).resolve()
    out = []
    for folder, pattern in SCANNED:
        for path in sorted((ROOT / folder).rglob(pattern) if folder != "." else [ROOT / pattern]):
            if path.resolve() == this or not path.is_file():
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                out += [(f"{path.relative_to(ROOT)}:{number}", section) for section in citations(line)]
    return out


def test_every_design_citation_resolves_to_a_section_heading():
    sections = headings(DESIGN.read_text(encoding="utf-8"))
    cited = cited_sections()
    assert len(cited) >= 10, f"found only {len(cited)} design citations: the scanner is broken"
    dangling = [f"{where}: §{section}" for where, section in cited if section not in sections]
    assert not dangling, (
        "citations of sections docs/design.md does not have (add the heading, or fix the "
        "citation):\n" + "\n".join(dangling)
    )


def test_design_keeps_its_section_numbers():
    sections = headings(DESIGN.read_text(encoding="utf-8"))
    wanted = [str(n) for n in range(1, 11)] + [f"6.{n}" for n in range(1, 12)]
    missing = [s for s in wanted if s not in sections]
    assert not missing, f"docs/design.md lost numbered sections: {missing}"


def test_citation_and_heading_parsing():
    assert citations("rules used here (design §6.4): every token") == ["6.4"]
    assert citations('"""The house rules of docs/design.md §3, checked"""') == ["3"]
    assert citations("Design §6 rules 1-2: tokens are drawn") == ["6", "6.1", "6.2"]
    assert citations("(see design §6.7).") == ["6.7"]
    assert citations("# design.md section 5: a tiny RM could not learn addition") == ["5"]
    assert citations("coefficient (Ziegler et al. 2019, eq. 2 and §2.2).") == []
    assert citations("as Huang et al. 2024 advise (design §6.8)") == ["6.8"]
    text = (
        "## 6. PPO\n### 6.1 Sample\n### §6.2 Score\n## Section 7: Scale\n"
        "```\n# 9. not a heading\n```\n#10 no\n"
    )
    assert headings(text) == {"6", "6.1", "6.2", "7"}


def test_src_cites_no_document_outside_the_repository():
    """ "The seed" (the notebook the project started from) is told once, in docs/design.md §8.1; the
    code explains itself or cites that section instead of a document a reader cannot open."""
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bthe seed\b|\bseed's\b", line, re.I)
    ]
    assert not found, "\n".join(found)


def metric_constants() -> dict[str, str]:
    """CONSTANT -> metric name, for every string constant of rlhfkit.run.metrics."""
    return {key: value for key, value in vars(metrics).items() if key.isupper() and isinstance(value, str)}


def test_metric_table_lists_every_constant():
    """§2.2 lists every metric name of run/metrics.py, backticked, so a new metric cannot go undocumented."""
    text = DESIGN.read_text(encoding="utf-8")
    names = metric_constants()
    assert len(names) >= 40, f"found only {len(names)} metric constants: the scan is broken"
    missing = [f"{key} = {value!r}" for key, value in sorted(names.items()) if f"`{value}`" not in text]
    assert not missing, (
        "metric names docs/design.md §2.2 does not list (add a row `| `CONSTANT` | `name` | "
        "written by | meaning |`):\n" + "\n".join(missing)
    )


METRIC_ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|\s*`([^`]+)`\s*\|", re.MULTILINE)


def test_metric_table_rows_name_real_constants():
    """Every row `| `CONSTANT` | `name` | ...` of the design names a constant of run/metrics.py with that
    value: a renamed or removed metric cannot linger in the table."""
    names = metric_constants()
    rows = METRIC_ROW.findall(DESIGN.read_text(encoding="utf-8"))
    assert len(rows) >= 40, f"found only {len(rows)} metric rows: the table or the pattern changed"
    wrong = [
        f"{key} -> `{value}` (run/metrics.py: {names.get(key, 'no such constant')!r})"
        for key, value in rows
        if names.get(key) != value
    ]
    assert not wrong, "metric rows of docs/design.md that run/metrics.py does not define:\n" + "\n".join(
        wrong
    )
