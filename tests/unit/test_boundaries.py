"""The rooms of DESIGN.md, checked on the source: who may import what, who may print."""

import ast
from pathlib import Path

from conftest import ROOT

AGENT_ALLOWED = {"numpy", "onnxruntime", "zmq", "msgpack", "psutil", "agents"}
AGENT_OPTIONAL = {"pynvml"}  # energy back ends a device may lack: imported inside functions only
PURE = ["config", "schema", "rows", "stats", "report", "clock", "policies/__init__", "policies/learned",
        "policies/context", "costmodel", "calibrate", "tiers", "cartography", "shaping"]
IO_MODULES = {"testbed.controller", "testbed.transport", "testbed.launch", "testbed.results", "testbed.replay",
              "testbed.partition", "zmq", "subprocess"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_agents_import_only_their_light_dependencies():
    import sys

    std = sys.stdlib_module_names
    for path in (ROOT / "agents").glob("*.py"):
        for mod in imports(path):
            top = mod.split(".")[0]
            assert top in std or top in AGENT_ALLOWED | AGENT_OPTIONAL, f"{path.name} imports {mod}"
            assert top != "testbed", f"{path.name} imports testbed"
        lazy_only = {m for m in top_level_imports(path) if m.split(".")[0] in AGENT_OPTIONAL}
        assert not lazy_only, f"{path.name} imports {lazy_only} at module level; import optional back ends lazily"


def test_pure_modules_import_no_io_module():
    for name in PURE:
        path = ROOT / "testbed" / f"{name}.py"
        bad = imports(path) & IO_MODULES
        assert not bad, f"testbed/{name}.py imports {bad}"


def test_only_the_cli_prints_or_exits():
    for path in (ROOT / "testbed").rglob("*.py"):
        if path.name in ("cli.py", "cli_devices.py", "__main__.py"):  # the CLI's modules
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else (f.attr if isinstance(f, ast.Attribute) else "")
                full = ast.unparse(f)
                assert name != "print" and full not in ("sys.exit", "exit", "os._exit"), f"{path}: {full}()"
