"""Programs that run with a device's own Python (3.8 and newer, standard library only), sent as text.

Each helper is a real module here, so ruff and mypy read it; :func:`source` turns one into the
text that ``python -c`` runs on the device: a line ``from testbed.devices.helpers.X import ...``
is replaced by the text of ``X`` (each module once, its docstring dropped), and a single
``from __future__ import annotations`` goes first so annotations never run on an old Python.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

HERE = Path(__file__).parent
_INLINE = "from testbed.devices.helpers."
_FUTURE = "from __future__ import annotations"


def _body(name: str, seen: set[str]) -> list[str]:
    text = (HERE / f"{name}.py").read_text()
    tree = ast.parse(text)
    skip = set()
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant):
        skip = set(range(tree.body[0].lineno, (tree.body[0].end_lineno or tree.body[0].lineno) + 1))
    out: list[str] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if i in skip or line.strip() == _FUTURE:
            continue
        if line.startswith(_INLINE):
            dep = line[len(_INLINE):].split(" ", 1)[0]
            if dep not in seen:
                seen.add(dep)
                out += _body(dep, seen)
            continue
        out.append(line)
    return out


@functools.cache
def source(name: str) -> str:
    """The program text of helper ``name`` (a module of this package), ready for ``python -c``."""
    if not (HERE / f"{name}.py").is_file() or name.startswith("_"):
        raise ValueError(f"no device helper {name!r} in {HERE}")
    return "\n".join([_FUTURE, *_body(name, {name})]) + "\n"
