"""The ```python blocks of README.md and docs/*.md run: a stale example fails here.

The blocks of one file run in order in one namespace (a later block may use an earlier one's
names), in a fresh interpreter whose working directory is a temporary folder (a block may write
files). A fragment may use, without defining them, the names of `PREAMBLE`: ``jax``, ``jnp``,
``optax``, ``gsc_jax`` and a small batch of ``logits`` ``[32, 10]`` and integer ``labels`` ``[32]``.
A block that needs data or an accelerator is skipped when the line before it is
``<!-- skip-test -->``.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP_MARK = "<!-- skip-test -->"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)

PREAMBLE = """\
import jax
import jax.numpy as jnp
import optax
import gsc_jax

logits = jax.random.normal(jax.random.key(0), (32, 10))
labels = jax.random.randint(jax.random.key(1), (32,), 0, 10)
"""

# Runs each block with its file name and first line in the traceback, and says which one failed.
RUNNER = """\
import json, sys, traceback
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__main__"}
exec(compile(blocks.pop(0)["code"], "<preamble>", "exec"), namespace)
for block in blocks:
    try:
        exec(compile("\\n" * (block["line"] - 1) + block["code"], block["file"], "exec"), namespace)
    except BaseException:
        print(f"FAILED: the block at {block['file']}:{block['line']}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def python_blocks(path: pathlib.Path, text: str | None = None) -> list[dict]:
    """The ```python blocks of a markdown file: code, first code line, whether marked to skip."""
    text = path.read_text() if text is None else text
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        blocks.append(
            {
                "file": path.relative_to(ROOT).as_posix(),
                "line": text[: match.start(1)].count("\n") + 1,
                "code": match.group(1),
                "skip": bool(before) and before[-1].strip() == SKIP_MARK,
            }
        )
    return blocks


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_blocks_are_found():
    """The extraction itself: the README's quick start is a python block."""
    assert python_blocks(ROOT / "README.md")
    sample = "a\n" + SKIP_MARK + "\n```python\nx = 1\n```\n\n```python\ny = x\n```\n"
    blocks = python_blocks(ROOT / "docs" / "sample.md", sample)
    assert [(b["code"], b["line"], b["skip"]) for b in blocks] == [
        ("x = 1\n", 4, True),
        ("y = x\n", 8, False),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [p for p in DOCUMENTS if python_blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_python_blocks_run(path, tmp_path):
    blocks = [b for b in python_blocks(path) if not b["skip"]]
    if not blocks:
        pytest.skip("every block is marked to skip")
    env = dict(os.environ, MPLBACKEND="Agg", JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps([{"code": PREAMBLE}, *blocks]),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
