"""``vl_anomaly_launch``: run our XML launch files where the ROS 2 launch system is not installed.

The ``launch`` / ``launch_ros`` packages are not on PyPI, so a PyPI-only set-up has no ``ros2 launch``. This
runner reads the same XML files ``ros2 launch`` reads on a real Jazzy install, for the subset our files use:

* ``<arg name default description>``, ``<let name value>``, ``<set_env name value>``, ``<group>``;
* ``<node pkg exec name namespace args ros_args output>`` with ``<param from>``, ``<param name value>`` and
  ``<remap from to>`` children;
* the ``if`` / ``unless`` attributes; substitutions ``$(var x)``, ``$(env NAME [default])``,
  ``$(find-pkg-share pkg)``.

Anything else is an error naming the element, so a file that works here also works with ``ros2 launch``.
Usage mirrors ``ros2 launch``: ``vl_anomaly_launch [PACKAGE] FILE [name:=value ...] [--show-args] [--print]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .environment import ensure_venv_ament_prefix

SUPPORTED = {"launch", "arg", "let", "set_env", "group", "node", "param", "remap"}
_SUBST = re.compile(r"\$\(([a-z-]+)(?:\s+([^)]*))?\)")


class LaunchError(RuntimeError):
    """A launch file this runner cannot execute, with the element and the reason."""


@dataclass
class Process:
    """One process to start: resolved command line, environment additions and its node name."""

    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _package_share(package: str) -> Path:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(package))
    except Exception as exc:                                                   # noqa: BLE001
        if package == "vl_anomaly_ros":                                        # running from the source tree
            return Path(__file__).resolve().parents[1]
        raise LaunchError(f"package {package!r} not found in AMENT_PREFIX_PATH "
                          f"({os.environ.get('AMENT_PREFIX_PATH', 'unset')}): {exc}") from exc


def _truthy(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise LaunchError(f"{where}: condition must be true/false/1/0, got {text!r}")


class LaunchFile:
    """A parsed launch file: declared arguments and, given argument values, the processes to start."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.root = ET.parse(self.path).getroot()
        except (OSError, ET.ParseError) as exc:
            raise LaunchError(f"cannot read launch file {self.path}: {exc}") from exc
        if self.root.tag != "launch":
            raise LaunchError(f"{self.path}: root element must be <launch>, got <{self.root.tag}>")
        for element in self.root.iter():
            if element.tag not in SUPPORTED:
                raise LaunchError(f"{self.path}: element <{element.tag}> is not supported here "
                                  f"(supported: {', '.join(sorted(SUPPORTED))})")

    def declared_args(self) -> dict[str, tuple[str | None, str]]:
        """``{name: (default or None, description)}`` of every ``<arg>``."""
        return {a.get("name"): (a.get("default"), a.get("description", "")) for a in self.root.iter("arg")}

    # -------------------------------------------------------------- evaluation
    def _subst(self, text: str | None, context: dict[str, str]) -> str:
        if text is None:
            return ""

        def replace(match: re.Match) -> str:
            kind, rest = match.group(1), (match.group(2) or "").strip()
            if kind == "var":
                if rest not in context:
                    raise LaunchError(f"{self.path}: $(var {rest}) used but no argument {rest!r} is set")
                return context[rest]
            if kind == "env":
                name, _, default = rest.partition(" ")
                if name in os.environ:
                    return os.environ[name]
                if default:
                    return default.strip()
                raise LaunchError(f"{self.path}: environment variable {name} is not set")
            if kind == "find-pkg-share":
                return str(_package_share(rest))
            raise LaunchError(f"{self.path}: substitution $({kind}) is not supported (var, env, find-pkg-share)")

        previous = None
        while previous != text:           # nested substitutions, innermost first
            previous, text = text, _SUBST.sub(replace, text)
        return text

    def _enabled(self, element: ET.Element, context: dict[str, str]) -> bool:
        where = f"{self.path}: <{element.tag} {element.get('name', '')}>"
        if element.get("if") is not None and not _truthy(self._subst(element.get("if"), context), where):
            return False
        if element.get("unless") is not None and _truthy(self._subst(element.get("unless"), context), where):
            return False
        return True

    def resolve(self, arguments: dict[str, str]) -> tuple[list[Process], dict[str, str]]:
        """Processes to start and environment variables to set, for ``arguments`` (name → value)."""
        declared = self.declared_args()
        unknown = set(arguments) - set(declared)
        if unknown:
            raise LaunchError(f"unknown launch argument(s) {', '.join(sorted(unknown))}; declared: "
                              f"{', '.join(declared)}")
        context: dict[str, str] = {}
        env: dict[str, str] = {}
        processes: list[Process] = []
        self._walk(self.root, arguments, context, env, processes)
        return processes, env

    def _walk(self, parent: ET.Element, arguments, context, env, processes) -> None:
        for element in parent:
            if element.tag == "arg":
                name = element.get("name")
                if name in arguments:
                    context[name] = arguments[name]
                elif element.get("default") is not None:
                    context[name] = self._subst(element.get("default"), context)
                else:
                    raise LaunchError(f"launch argument {name!r} is required ({element.get('description', '')})")
                continue
            if not self._enabled(element, context):
                continue
            if element.tag == "let":
                context[element.get("name")] = self._subst(element.get("value"), context)
            elif element.tag == "set_env":
                env[element.get("name")] = self._subst(element.get("value"), context)
            elif element.tag == "group":
                self._walk(element, arguments, dict(context), env, processes)
            elif element.tag == "node":
                processes.append(self._node(element, context, dict(env)))
            else:
                raise LaunchError(f"{self.path}: <{element.tag}> is only valid inside <node>")

    def _node(self, element: ET.Element, context: dict[str, str], env: dict[str, str]) -> Process:
        package, executable = element.get("pkg"), element.get("exec")
        if not package or not executable:
            raise LaunchError(f"{self.path}: <node> needs pkg and exec")
        cmd = [_find_executable(package, executable)]
        cmd += self._subst(element.get("args"), context).split()
        ros_args: list[str] = []
        name = self._subst(element.get("name"), context)
        if name:
            ros_args += ["-r", f"__node:={name}"]
        namespace = self._subst(element.get("namespace"), context)
        if namespace:
            ros_args += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
        for child in element:
            if not self._enabled(child, context):
                continue
            if child.tag == "param":
                if child.get("from") is not None:
                    path = self._subst(child.get("from"), context)
                    if not Path(path).is_file():
                        raise LaunchError(f"parameter file {path} does not exist")
                    ros_args += ["--params-file", path]
                else:
                    ros_args += ["-p", f"{child.get('name')}:={self._subst(child.get('value'), context)}"]
            elif child.tag == "remap":
                ros_args += ["-r", f"{self._subst(child.get('from'), context)}:={self._subst(child.get('to'), context)}"]
            else:
                raise LaunchError(f"{self.path}: <{child.tag}> is not valid inside <node>")
        ros_args += self._subst(element.get("ros_args"), context).split()
        if ros_args:
            cmd += ["--ros-args", *ros_args]
        return Process(name=name or executable, cmd=cmd, env=env)


def _find_executable(package: str, executable: str) -> str:
    """Where ``ros2 run`` would look (``<prefix>/lib/<package>/``), then next to this Python, then ``PATH``."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_prefix

        candidates.append(Path(get_package_prefix(package)) / "lib" / package / executable)
    except Exception:                                                          # noqa: BLE001
        pass
    candidates.append(Path(sys.executable).parent / executable)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(executable)
    if found:
        return found
    raise LaunchError(f"executable {executable!r} of package {package!r} not found (looked in "
                      f"{', '.join(map(str, candidates))} and PATH)")


def find_launch_file(spec: list[str]) -> Path:
    """``[FILE]`` or ``[PACKAGE, FILE]`` (the file then lives in ``share/PACKAGE/launch``)."""
    if len(spec) == 1:
        return Path(spec[0])
    return _package_share(spec[0]) / "launch" / spec[1]


def run(processes: list[Process], env: dict[str, str]) -> int:
    """Start every process, forward SIGINT/SIGTERM, wait for all; the exit code is the first non-zero one."""
    children = []
    for process in processes:
        child_env = {**os.environ, **env, **process.env}
        print(f"[vl_anomaly_launch] starting {process.name}: {' '.join(process.cmd)}", flush=True)
        children.append((process, subprocess.Popen(process.cmd, env=child_env)))

    def forward(signum, frame):                                                # noqa: ARG001
        for _, child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = 0
    for process, child in children:
        rc = child.wait()
        print(f"[vl_anomaly_launch] {process.name} exited with {rc}", flush=True)
        if rc not in (0, -signal.SIGINT) and code == 0:
            code = rc if rc > 0 else 1
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vl_anomaly_launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="+", help="[PACKAGE] FILE.launch.xml, then name:=value arguments")
    parser.add_argument("--show-args", "-s", action="store_true", help="list the launch arguments and exit")
    parser.add_argument("--print", dest="print_only", action="store_true",
                        help="print the resolved commands and environment, start nothing")
    args = parser.parse_intermixed_args(argv)
    ensure_venv_ament_prefix()
    spec = [s for s in args.spec if ":=" not in s]
    arguments = dict(s.split(":=", 1) for s in args.spec if ":=" in s)
    try:
        launch = LaunchFile(find_launch_file(spec))
        if args.show_args:
            for name, (default, description) in launch.declared_args().items():
                print(f"    '{name}':\n        {description}\n        (default: {default!r})")
            return 0
        processes, env = launch.resolve(arguments)
    except LaunchError as exc:
        print(f"vl_anomaly_launch: error: {exc}", file=sys.stderr)
        return 2
    if args.print_only:
        for key, value in env.items():
            print(f"export {key}={value}")
        for process in processes:
            print(" ".join(process.cmd))
        return 0
    return run(processes, env)


if __name__ == "__main__":
    sys.exit(main())
