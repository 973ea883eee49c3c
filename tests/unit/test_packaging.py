"""What `pip install .` puts into site-packages: one top-level package, its data files and the console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of what the build reads, so the build's own files (build/, *.egg-info) stay out of the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "ksched", src / "ksched", ignore=shutil.ignore_patterns("__pycache__"))
    # The same build `pip install .` does, without fetching a build environment.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=240)
    (path,) = out.glob("ksched-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_exactly_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"ksched"}
    top_level = next(n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt"))
    assert wheel.read(top_level).decode().split() == ["ksched"]


def test_the_console_script_is_the_packaged_cli(wheel: zipfile.ZipFile) -> None:
    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "ksched = ksched.cli.main:main" in wheel.read(entry_points).decode()


def test_the_wheel_carries_the_schemas_the_ui_the_examples_and_the_broker_recipe(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    schemas = sorted(p.name for p in (REPO / "ksched" / "schemas").glob("*.avsc"))
    assert schemas and all(f"ksched/schemas/{s}" in names for s in schemas)
    assert {"ksched/streams/openapi.json", "ksched/streams/ui/index.html", "ksched/streams/ui/app.js",
            "ksched/examples/cron.yaml", "ksched/examples/hello.sh", "ksched/devbroker/pom.xml"} <= names
