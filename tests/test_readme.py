"""The docs stay true: the README's test command is what CI runs, Table 8 is what the code prints."""

import pathlib
import re
import subprocess

import pytest

from experiments import table8

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_COMMAND = 'pip install -e ".[dev]" && python -m pytest -q -n 2'


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in readme
    assert TEST_COMMAND in ci


def test_paper_notes_table8_is_what_the_code_prints():
    notes = (ROOT / "docs" / "paper_notes.md").read_text()
    for line in table8.table8_markdown().splitlines():
        assert line in notes, line


# Text a user's clone must not hold: paths of a development machine, documents that are not in
# the repository, and narration of how the project was developed.
FORBIDDEN = {
    "a development machine's path": re.compile(r"\.\./shared|/wor" r"k/|/tm" r"p/gsc"),
    "a document outside the repository": re.compile(r"algorithms\.md|style\.md"),
    "development history": re.compile(r"\bsess" r"ions?\b|\bissue \d", re.IGNORECASE),
}
TEXT_SUFFIXES = {".md", ".py", ".ipynb", ".cc", ".toml"}


def _project_text_files():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for name in listed.stdout.splitlines():
        path = ROOT / name
        if path.suffix in TEXT_SUFFIXES and path.is_file():
            yield path


def test_no_machine_paths_outside_documents_or_history():
    hits = []
    for path in _project_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
