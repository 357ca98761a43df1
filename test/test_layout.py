"""Repository layout and boundaries: the design card's folders, the ROS package manifests, and a ROS-free core."""

from __future__ import annotations

import ast
import re
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


def test_networks_know_nothing_of_scores_or_postprocessing():
    for file in (CORE / "networks").glob("*.py"):
        text = file.read_text(encoding="utf-8")
        assert not re.search(r"from \.\.(scores|postprocess|pipeline|fusion)", text), file


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
    pip_only = {"vl_anomaly", "torch", "rosbags"}            # installed with pip (docs/ros.md), no rosdep keys
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
