"""The package's metadata files agree with each other."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_pyproject_dependencies() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_block = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert "python=3.11" in env["dependencies"]
    assert sorted(pip_block) == sorted(deps)


def test_constraints_pin_every_dependency() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {
        _name(line): line.split("==", 1)[1]
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for dep in deps:
        assert _name(dep) in pinned, f"{dep} is not pinned in constraints.txt"
    assert pinned["torch"] == "2.14.1"
    assert pinned["zarr"].startswith("3.1.")


def test_readme_opens_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert blocks, "README has no command block"
    first = [line for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]
    assert first == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text()
