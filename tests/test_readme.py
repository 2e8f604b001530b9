"""The docs stay true: the README's test command is what CI runs, Table 8 is what the code prints."""

import pathlib

from gsc_jax import table8

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
