"""gridpatrol installed from a wheel (``pip install .``, not editable): the package has no
checkout beside it, so the model manifest and the demo site must travel inside the wheel, and
the commands must find them from any working directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from gridpatrol.demo import SAMPLE_CLIPS
from gridpatrol.ingest.broker import free_port

REPO = Path(__file__).resolve().parents[1]
# What a build reads and nothing else: no weights (links to ../shared), footage, state or caches.
NOT_BUILT = shutil.ignore_patterns(
    ".git",
    ".venv",
    "var",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".typecheck",
    "test-artifacts",
    "*_openvino_model",
)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    cwd: Path  # an empty folder outside the checkout
    env: dict[str, str]

    def gridpatrol(
        self, *args: str, cwd: Path | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "gridpatrol"), *args],
            cwd=cwd or self.cwd,
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _run(*argv: str | Path) -> None:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of this checkout in a venv of its own; its dependencies come from the test's
    environment (a path in a .pth file: the .pth files there, among them the checkout's editable
    install, are not run), so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_BUILT)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", tmp / "dist", source)  # fmt: skip
    (wheel,) = (tmp / "dist").glob("gridpatrol-*.whl")
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    (site_packages,) = venv.glob("lib/python*/site-packages")
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site_packages / "test-deps.pth").write_text("\n".join(deps) + "\n")
    # --ignore-installed: pip sees the editable install through the .pth path and would
    # otherwise uninstall it from the test's environment to put the wheel in its place.
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--ignore-installed",
         "--no-deps", "--no-index", wheel)  # fmt: skip
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRIDPATROL_", "PYTHON"))}
    env |= {
        "GRIDPATROL_OFFLINE": "1",
        "GRIDPATROL_SHARED": str(tmp / "no-shared"),
        "GRIDPATROL_CACHE": str(tmp / "cache"),
        "COLUMNS": "500",  # --help on one line per option
    }
    return Installed(wheel, venv, site_packages, cwd, env)


def test_the_wheel_carries_the_manifest_and_the_demo_site_but_no_weights(
    installed: Installed,
) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        assert (
            wheel.read("gridpatrol/models/manifest.yaml")
            == (REPO / "models" / "manifest.yaml").read_bytes()
        )
        assert (
            wheel.read("gridpatrol/samples/site.yaml")
            == (REPO / "samples" / "site.yaml").read_bytes()
        )
    assert [n for n in names if n.startswith("gridpatrol/models/")] == [
        "gridpatrol/models/manifest.yaml"
    ]
    assert [n for n in names if n.startswith("gridpatrol/samples/")] == [
        "gridpatrol/samples/site.yaml"
    ]
    # The licence's text travels with the code it covers.
    (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    with zipfile.ZipFile(installed.wheel) as wheel:
        assert wheel.read(licence) == (REPO / "LICENSE").read_bytes()
    assert (REPO / "LICENSE").read_text().split("\n", 1)[0].strip() == (
        "GNU AFFERO GENERAL PUBLIC LICENSE"
    )


def test_an_installed_gridpatrol_knows_the_manifest_models(installed: Installed) -> None:
    """``--model yolov8n`` names a manifest entry: without weights the error is about that
    entry's folder, in ``models/`` of the working directory, not about an unknown model."""
    (installed.cwd / "x.jpg").write_bytes(b"")
    proc = installed.gridpatrol("scan", "--model", "yolov8n", "x.jpg")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "no models/manifest.yaml found" not in proc.stderr
    assert "scan: no weights for model 'yolov8n': looked for " in proc.stderr
    looked = f"{installed.cwd / 'models' / 'yolov8n_int8_openvino_model'}, "
    assert looked in proc.stderr
    assert "put yolov8n.pt into " in proc.stderr


def test_an_installed_demo_runs_the_packaged_site_and_works_in_the_working_directory(
    installed: Installed,
) -> None:
    proc = installed.gridpatrol("demo", "--help")
    assert proc.returncode == 0, proc.stderr
    (config,) = re.findall(r"the site file \(default: (\S+)\)", proc.stdout)
    assert Path(config) == installed.site_packages / "gridpatrol" / "samples" / "site.yaml"
    assert Path(config).read_bytes() == (REPO / "samples" / "site.yaml").read_bytes()
    (workdir,) = re.findall(r"folder; default: (\S+)\)", proc.stdout)
    assert Path(workdir) == installed.cwd / "var" / "demo"
    checked = installed.gridpatrol("check-config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1] == f"{config}: OK"


def test_an_installed_demo_keeps_its_footage_in_the_working_directory(
    installed: Installed,
) -> None:
    """Without footage (no shared folder, no internet) the demo stops before it starts anything
    and names the folder to fill: ``var/footage`` of the working directory."""
    # A proxy that refuses connections stands in for a machine without internet access.
    refused = f"http://127.0.0.1:{free_port()}"
    proc = installed.gridpatrol(
        "demo", "--no-browser", https_proxy=refused, HTTPS_PROXY=refused, no_proxy="", NO_PROXY=""
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    footage = installed.cwd / "var" / "footage"
    assert f"no footage: {footage / 'pedestrian_street_1080p.mp4'} is missing" in proc.stderr
    assert "Put MP4 clips named pedestrian_street_1080p.mp4, " in proc.stderr
    assert f" in {footage}, or set GRIDPATROL_SHARED" in proc.stderr
    assert not (installed.site_packages / "var").exists()


def test_an_installed_demo_runs_its_components_from_the_installed_package(
    installed: Installed, tmp_path: Path
) -> None:
    """Run in the checkout it was installed from (or the image's WORKDIR), the working directory
    holds the checkout's gridpatrol/ folder, which has none of the subpackages the installed
    one maps in: the components must still import the installed gridpatrol, so the API comes
    up and the demo goes on to start the rest."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "gridpatrol", checkout / "gridpatrol", ignore=NOT_BUILT)
    footage = checkout / "var" / "footage"
    footage.mkdir(parents=True)
    for name in SAMPLE_CLIPS:  # found, never read: the demo stops as soon as all have started
        (footage / name).write_bytes(b"")
    port = free_port()
    proc = installed.gridpatrol(
        "demo", "--no-browser", "--duration", "0", "--port", str(port), cwd=checkout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"review console:  http://127.0.0.1:{port}/review" in proc.stdout.splitlines()
    assert proc.stdout.splitlines()[-1] == "candidates: 0"
    logs = checkout / "var" / "demo" / "logs"
    assert {p.stem for p in logs.iterdir()} == {
        "api",
        "bridge",
        "broker",
        "detect",
        "ingest",
        "sensors",
    }
    assert "Application startup complete." in (logs / "api.log").read_text()


def test_the_env_file_of_the_secrets_is_never_committed() -> None:
    """docs/operations.md and docker-compose.yml have operators keep the secrets in `.env`."""
    done = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO, check=False)
    assert done.returncode == 0
