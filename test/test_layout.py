"""Repository layout and boundaries: the design card's folders, the ROS package manifests, and a ROS-free core."""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "model" / "vl_anomaly"
FORBIDDEN_IN_CORE = ("rclpy", "vl_anomaly_ros", "vl_anomaly_msgs", "sensor_msgs", "std_msgs", "cv_bridge",
                     "rosbags", "diagnostic_msgs")


@pytest.mark.parametrize("path", ["vl_anomaly_ros", "launch", "config", "msg", "model", "test", "package.xml",
                                  "setup.py", "setup.cfg", "resource/vl_anomaly_ros", "model/pyproject.toml",
                                  "docs/architecture.md", "docs/benchmarks.md", "benchmarks", ".ci/run"])
def test_design_card_layout(path):
    assert (ROOT / path).exists(), path


def _imports(file: Path) -> set[str]:
    tree = ast.parse(file.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_ros():
    offenders = {str(f.relative_to(ROOT)): sorted(_imports(f) & set(FORBIDDEN_IN_CORE))
                 for f in CORE.rglob("*.py") if _imports(f) & set(FORBIDDEN_IN_CORE)}
    assert not offenders, offenders


def _module_name(file: Path) -> str:
    parts = list(file.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _core_modules() -> dict[str, Path]:
    return {_module_name(f): f for f in CORE.rglob("*.py")}


def core_import_graph() -> dict[str, set[str]]:
    """``{module: core modules it imports}`` for every module under ``model/vl_anomaly``: absolute and relative
    imports, at module level or inside functions (a lazy import is still a dependency). ``from pkg import name``
    points at ``pkg.name`` when that is a module, else at ``pkg``."""
    modules = _core_modules()
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == "vl_anomaly"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != "vl_anomaly":
                    continue
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_import_graph_sees_relative_imports():
    """The checker itself: relative imports of every form resolve to the right core module."""
    graph = core_import_graph()
    assert "vl_anomaly.outputs" in graph["vl_anomaly.networks.vl_anomaly"]            # from ..outputs import
    assert "vl_anomaly.deploy.records" in graph["vl_anomaly.deploy.export"]            # from .records import
    assert "vl_anomaly.networks" in graph["vl_anomaly.factory"]                        # from . import networks
    assert "vl_anomaly.deploy" in graph["vl_anomaly.factory"]                          # from .deploy import …
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_has_no_import_cycle():
    assert _cycles(core_import_graph()) == []


def test_networks_know_nothing_of_scores_or_postprocessing():
    """Networks produce outputs; scores, fusion, post-processing, the pipeline and deployment consume them."""
    forbidden = ("vl_anomaly.scores", "vl_anomaly.vl_scores", "vl_anomaly.postprocess", "vl_anomaly.pipeline",
                 "vl_anomaly.fusion", "vl_anomaly.deploy", "vl_anomaly.factory", "vl_anomaly.evaluation")
    graph = core_import_graph()
    offenders = {m: sorted(e for e in edges if e.startswith(forbidden))
                 for m, edges in graph.items() if m.startswith("vl_anomaly.networks")}
    assert {m: e for m, e in offenders.items() if e} == {}


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for file in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("vl_anomaly")):
                offenders += [f"{file.relative_to(ROOT)}: {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


def test_ros_package_manifests():
    top = ET.parse(ROOT / "package.xml").getroot()
    assert top.get("format") == "3" and top.findtext("name") == "vl_anomaly_ros"
    assert top.find("export/build_type").text == "ament_python"
    assert "vl_anomaly_msgs" in [d.text for d in top.findall("exec_depend")]
    assert 'PACKAGE = "vl_anomaly_ros"' in (ROOT / "setup.py").read_text()
    msgs = ET.parse(ROOT / "msg" / "package.xml").getroot()
    assert msgs.findtext("name") == "vl_anomaly_msgs"
    assert msgs.find("export/build_type").text == "ament_cmake"
    assert msgs.findtext("member_of_group") == "rosidl_interface_packages"
    cmake = (ROOT / "msg" / "CMakeLists.txt").read_text()
    for msg in sorted((ROOT / "msg").glob("*.msg")):
        assert f":msg/{msg.name}" in cmake, f"{msg.name} is not generated"


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- ci:setup -->") == 1 and readme.count("<!-- ci:test -->") == 1
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_node_package_xml_declares_what_the_node_imports():
    """package.xml stays honest: every ROS package or rosdep-keyed library the node imports is an exec_depend."""
    rosdep_keys = {"cv2": "python3-opencv", "numpy": "python3-numpy", "yaml": "python3-yaml", "tqdm": "python3-tqdm"}
    pip_only = {"vl_anomaly", "torch", "rosbags", "mcap"}    # installed with pip (docs/ros.md), no rosdep keys
    optional = {"cv_bridge"}                                 # used only when importable
    stdlib = set(__import__("sys").stdlib_module_names)
    declared = {d.text for d in ET.parse(ROOT / "package.xml").getroot().findall("exec_depend")}
    needed = set()
    for file in (ROOT / "vl_anomaly_ros").glob("*.py"):
        for name in _imports(file) - stdlib - pip_only - optional - {"vl_anomaly_ros", "__future__"}:
            needed.add(rosdep_keys.get(name, name))
    assert needed <= declared, sorted(needed - declared)


def test_docs_list_every_node_parameter():
    from vl_anomaly_ros.params import PARAMS

    text = (ROOT / "docs" / "ros.md").read_text()
    assert [name for name in PARAMS if f"| `{name}` |" not in text] == []
