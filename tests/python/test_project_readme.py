"""Our own README's Python examples run and give the shapes it states.

The blocks are read from README.md itself, so the README cannot drift from
the code without this test failing.
"""

from __future__ import annotations

import pathlib
import re

import mlx.core as mx

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks():
    text = README.read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_a_python_quick_start():
    assert _python_blocks(), "README.md lost its python quick start"


def test_readme_python_blocks_run_with_the_stated_shapes():
    for block in _python_blocks():
        scope: dict = {}
        exec(compile(block, str(README), "exec"), scope)
        # Check every "# [a, b, ...]" shape comment on a line that assigns names.
        for line in block.splitlines():
            m = re.match(r"\s*([\w, ]+?)\s*=.*#\s*(\[[\d, ]+\](?:,\s*\[[\d, ]+\])*)\s*$", line)
            if not m:
                continue
            names = [n.strip() for n in m.group(1).split(",")]
            shapes = [tuple(int(x) for x in s.split(",")) for s in re.findall(r"\[([\d, ]+)\]", m.group(2))]
            assert len(names) == len(shapes), line
            for name, shape in zip(names, shapes):
                value = scope[name]
                assert isinstance(value, mx.array), (name, line)
                assert tuple(value.shape) == shape, (name, value.shape, shape)
