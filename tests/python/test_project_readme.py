"""Our own README's Python examples run and give the shapes they state.

The blocks are read from README.md itself, so the README cannot drift from the
code without this test failing.  A statement ending in a comment such as
``# [2, 64, 4, 32]`` (or ``# [..], [..]`` for a tuple target) must produce
arrays of exactly those shapes.
"""

from __future__ import annotations

import ast
import pathlib
import re

import mlx.core as mx

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
SHAPES = re.compile(r"#\s*(\[[\d, ]+\](?:\s*,\s*\[[\d, ]+\])*)\s*$")


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _stated_shapes(stmt, lines):
    m = SHAPES.search(lines[stmt.end_lineno - 1])
    if not m or not isinstance(stmt, ast.Assign):
        return None
    target = stmt.targets[0]
    names = [e.id for e in target.elts] if isinstance(target, ast.Tuple) else [target.id]
    shapes = [tuple(int(x) for x in s.split(",")) for s in re.findall(r"\[([\d, ]+)\]", m.group(1))]
    assert len(names) == len(shapes), lines[stmt.end_lineno - 1]
    return list(zip(names, shapes))


def test_readme_has_a_python_quick_start():
    assert _python_blocks(), "README.md lost its python quick start"


def test_readme_python_blocks_run_with_the_stated_shapes():
    checked = 0
    for block in _python_blocks():
        lines = block.splitlines()
        scope: dict = {}
        for stmt in ast.parse(block).body:
            exec(compile(ast.Module([stmt], type_ignores=[]), str(README), "exec"), scope)
            for name, shape in _stated_shapes(stmt, lines) or []:
                assert isinstance(scope[name], mx.array), name
                assert tuple(scope[name].shape) == shape, (name, scope[name].shape, shape)
                checked += 1
    assert checked >= 4  # the quick start states at least four shapes
