"""The documentation keeps up with the code: the options reference is what the parser says, every
relative link leads somewhere, and the README's commands and exit codes are the ones that exist."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
LINKED_DOCUMENTS = [README, *sorted((REPO_ROOT / "docs").glob("*.md")),
                    REPO_ROOT / "bench" / "README.md", REPO_ROOT / "tests" / "README.md"]

FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@functools.lru_cache(maxsize=None)
def load_options_reference():
    spec = importlib.util.spec_from_file_location("options_reference", REPO_ROOT / "scripts" / "options_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(path: Path) -> str:
    """The text of a Markdown file without its code, where brackets are not links."""
    return CODE_SPAN.sub("", FENCED_BLOCK.sub("", path.read_text(encoding="utf-8")))


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in FENCED_BLOCK.sub("", path.read_text(encoding="utf-8")).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower().replace("`", "")
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def relative_links(path: Path) -> list[str]:
    return [target for target in MARKDOWN_LINK.findall(prose(path))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_the_options_reference_is_what_the_parser_generates():
    reference = load_options_reference()
    expected = reference.render(reference.s3_bulk_transfer.build_parser())
    assert reference.OPTIONS_MD.exists(), f"docs/options.md is missing: run {reference.REGENERATE_COMMAND}"
    assert reference.OPTIONS_MD.read_text(encoding="utf-8") == expected, (
        f"docs/options.md is stale (the argument parser changed): run {reference.REGENERATE_COMMAND}")


def test_the_reference_shows_every_option_with_its_default():
    reference = load_options_reference()
    text = reference.OPTIONS_MD.read_text(encoding="utf-8")
    assert "| `--chunk-size BYTES` | 8MiB | part size for multipart objects" in text
    assert "| `--copy-mode {auto,stream,server-side}` | auto |" in text
    assert "| `-q, --quiet` |  | print errors only |" in text
    for option in ("--multipart-threshold", "--shard", "--from-inventory", "--verify-only", "--no-tags"):
        assert f"`{option}" in text


@pytest.mark.parametrize("document", LINKED_DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(document: Path):
    assert document.exists(), f"{document.relative_to(REPO_ROOT)} is missing"
    broken = []
    for target in relative_links(document):
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.relative_to(REPO_ROOT)}")
    assert not broken, f"broken links in {document.relative_to(REPO_ROOT)}: {broken}"


def test_the_link_check_finds_links_and_ignores_code():
    links = MARKDOWN_LINK.findall(CODE_SPAN.sub("", "see [the options](docs/options.md#speed) and `[x](not-a-link)`"))
    assert links == ["docs/options.md#speed"]
    assert "docs/options.md" in relative_links(README)


def test_the_readme_names_the_commands_ci_and_a_newcomer_run():
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "exec ./scripts/run-tests.sh" in ci
    readme = README.read_text(encoding="utf-8")
    for command in ("./scripts/run-tests.sh", "./scripts/demo.sh"):
        assert f"`{command}`" in readme, f"the README no longer gives {command}"
        assert (REPO_ROOT / command).stat().st_mode & 0o111, f"{command} is not executable"


def test_the_readme_exit_codes_are_those_of_the_help():
    tool = load_options_reference().s3_bulk_transfer
    help_codes = re.findall(r"^  (\d+) ", tool.EXIT_CODES_HELP, re.MULTILINE)
    section = README.read_text(encoding="utf-8").split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    readme_codes = re.findall(r"^\| (\d+) \|", section, re.MULTILINE)
    assert help_codes == ["0", "1", "2", "130"]
    assert readme_codes == help_codes


def test_every_test_the_traceability_tables_name_exists():
    named = set(re.findall(r"`(?:test_\w+\.py::)?(test_\w+)`", (REPO_ROOT / "tests" / "README.md").read_text("utf-8")))
    defined = set()
    for module in (REPO_ROOT / "tests").glob("test_*.py"):
        defined.update(re.findall(r"^def (test_\w+)\(", module.read_text(encoding="utf-8"), re.MULTILINE))
    assert named, "tests/README.md names no test"
    assert not named - defined, f"tests/README.md names tests that do not exist: {sorted(named - defined)}"
