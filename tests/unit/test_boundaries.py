"""The layer table of docs/design.md, checked on the source: who may import whom, no cycles, who may print."""

import ast
import graphlib
import sys
from pathlib import Path

from conftest import ROOT

AGENT_ALLOWED = {"numpy", "onnxruntime", "zmq", "msgpack", "psutil", "agents"}
AGENT_OPTIONAL = {"pynvml"}  # energy back ends a device may lack: imported inside functions only

CORE = {"testbed.core"}
DATA = CORE | {"testbed.formats"}
#: unit -> the testbed units it may import (its own unit always). A unit is a package or a top-level module.
LAYERS: dict[str, set[str]] = {
    "testbed.core": set(),
    "testbed.formats": CORE,
    "testbed.policies": DATA,
    "testbed.build": DATA,
    "testbed.devices": DATA,
    "testbed.checks": DATA | {"testbed.policies"},
    "testbed.analysis": DATA | {"testbed.policies"},
    "testbed.run": DATA | {"testbed.policies", "testbed.devices"},
    "testbed.reference": DATA | {"testbed.build", "testbed.policies"},
    "testbed.cli": DATA | {"testbed.policies", "testbed.build", "testbed.devices", "testbed.checks",
                           "testbed.analysis", "testbed.run", "testbed.reference"},
    "testbed.__main__": {"testbed.cli"},
    "testbed": set(),
}
#: every unit may read ``testbed.__version__``
#: the only edges from testbed/ into agents/: the wire format everywhere, and the device's own runtime where the
#: controller must compute exactly what a device computes (sha256 of the files it receives, onnxruntime parity)
AGENT_EDGES = {
    "agents.protocol": set(LAYERS),
    "agents.runtime": {"testbed.formats", "testbed.build", "testbed.devices"},
}
#: units that do no I/O of their own (no sockets, no processes, no files written)
PURE = ["testbed.core.clock", "testbed.core.costmodel", "testbed.formats.schema", "testbed.run.rows",
        "testbed.analysis.stats", "testbed.analysis.report", "testbed.analysis.calibrate", "testbed.build.tiers",
        "testbed.build.cartography", "testbed.devices.shaping", "testbed.policies", "testbed.policies.context",
        *(f"testbed.policies.{p.stem}" for p in (ROOT / "testbed" / "policies").glob("*.py") if p.stem != "__init__")]
IO_MODULES = {"testbed.run.controller", "testbed.run.transport", "testbed.devices.launch", "testbed.formats.results",
              "testbed.analysis.replay", "testbed.build.pipeline", "zmq", "subprocess", "socket", "shutil"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file: module level, inside functions, under TYPE_CHECKING."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from testbed import policies` names a module
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


def source_graph() -> dict[str, set[str]]:
    """testbed module -> the testbed and agents modules it imports."""
    known = {module_name(p) for p in [*(ROOT / "testbed").rglob("*.py"), *(ROOT / "agents").rglob("*.py")]}
    graph = {}
    for path in (ROOT / "testbed").rglob("*.py"):
        graph[module_name(path)] = {m for m in imports(path) if m in known and m != "agents"}
    return graph


def test_every_unit_is_in_the_layer_table():
    units = {unit_of(m) for m in source_graph()}
    assert units <= set(LAYERS), f"add {units - set(LAYERS)} to LAYERS and to docs/design.md"


def test_each_unit_imports_only_the_units_below_it():
    bad = []
    for mod, deps in source_graph().items():
        unit = unit_of(mod)
        for dep in deps:
            if dep.startswith("agents."):
                if unit not in AGENT_EDGES.get(dep, set()):
                    bad.append(f"{mod} imports {dep}")
            elif dep != "testbed" and unit_of(dep) != unit and unit_of(dep) not in LAYERS[unit]:
                bad.append(f"{mod} imports {dep} ({unit} may import {sorted(LAYERS[unit])})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles_between_modules():
    graph = {m: {d for d in deps if d.startswith("testbed") and d != m} for m, deps in source_graph().items()}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_the_table_catches_an_upward_import():
    # the check itself can fail: a core module importing the controller is reported
    assert "testbed.run" not in LAYERS["testbed.core"]
    assert unit_of("testbed.run.controller") == "testbed.run"
    assert "agents.runtime" in imports(ROOT / "testbed" / "build" / "transformer.py")


def test_agents_import_only_their_light_dependencies():
    std = sys.stdlib_module_names
    for path in (ROOT / "agents").rglob("*.py"):
        for mod in imports(path):
            top = mod.split(".")[0]
            assert top in std or top in AGENT_ALLOWED | AGENT_OPTIONAL, f"{path.name} imports {mod}"
            assert top != "testbed", f"{path.name} imports testbed"
        lazy_only = {m for m in top_level_imports(path) if m.split(".")[0] in AGENT_OPTIONAL}
        assert not lazy_only, f"{path.name} imports {lazy_only} at module level; import optional back ends lazily"


def test_pure_modules_import_no_io_module():
    paths = {module_name(p): p for p in (ROOT / "testbed").rglob("*.py")}
    for name in PURE:
        bad = imports(paths[name]) & IO_MODULES
        assert not bad, f"{name} imports {bad}"


def test_only_the_cli_prints_or_exits():
    for path in (ROOT / "testbed").rglob("*.py"):
        if module_name(path).startswith("testbed.cli") or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else (f.attr if isinstance(f, ast.Attribute) else "")
                full = ast.unparse(f)
                assert name != "print" and full not in ("sys.exit", "exit", "os._exit"), f"{path}: {full}()"


def test_no_function_runs_over_80_lines():
    long = []
    for root in ("testbed", "agents", "benchmarks"):
        for path in (ROOT / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these into named steps: " + "; ".join(long)


#: public API whose names start with an underscore (namedtuple methods, os._exit)
UNDERSCORE_API = {"_replace", "_asdict", "_fields", "_exit"}


def test_no_test_touches_a_private_attribute_of_the_code_under_test():
    """Tests drive public interfaces (injected transports, clocks and fakes), never ``obj._private``."""
    found = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in UNDERSCORE_API
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not found, "\n".join(found)


def test_the_layer_table_of_the_design_page_is_the_one_enforced_here():
    import re

    text = (ROOT / "docs" / "design.md").read_text()
    documented = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`testbed/(\w+)(?:\.py)?`", cells[0]) if len(cells) == 3 else None
        if m:
            names = set(re.findall(r"`([\w.]+)`", cells[2]))
            units = {f"testbed.{n}" for n in names if not n.startswith("agents")}
            documented[f"testbed.{m.group(1)}"] = "everything" if cells[2] == "everything" else units
            for edge in (n for n in names if n.startswith("agents.") and n != "agents.protocol"):
                assert f"testbed.{m.group(1)}" in AGENT_EDGES[edge], (m.group(1), edge)
    assert set(documented) == set(LAYERS) - {"testbed", "testbed.__main__"}
    for unit, allowed in documented.items():
        expected = LAYERS[unit]
        if allowed == "everything":
            assert expected == set(LAYERS) - {"testbed", "testbed.__main__", unit}, unit
        else:
            assert allowed == expected, (unit, allowed, expected)
