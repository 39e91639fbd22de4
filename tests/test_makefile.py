"""The Makefile's targets on the machines they meet: ``make setup`` uses the venv it finds only
when it is whole and made by the Python asked for; ``links``, ``services`` and ``browser`` say
what is missing and keep what users made. Pythons, apt and Playwright here are stand-ins that
record their calls, so nothing is downloaded; the Makefile is the project's own, run in a copy
of the checkout's root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A Python of the given version: `-c CODE` runs CODE with that version_info; `-m venv DIR`
# makes DIR/bin/python (a copy of itself) and, unless ensurepip is missing (Debian without
# python3-venv, which fails after bin/python exists), a bin/pip that logs its arguments.
FAKE_PYTHON = """\
#!/bin/sh
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
  if [ -n "{no_ensurepip}" ]; then
    echo "The virtual environment was not created successfully because ensurepip is not" >&2
    exit 1
  fi
  printf '#!/bin/sh\\necho "$*" >> "{pip_log}"\\n' > "$3/bin/pip" && chmod +x "$3/bin/pip"
  exit 0
fi
[ "$1" = -c ] || exit 2
exec {real} -c 'import sys; sys.version_info = {version}; exec(sys.argv[1])' "$2"
"""


def _python(root: Path, name: str, version: tuple[int, int, int], *, ensurepip: bool) -> str:
    path = root / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        FAKE_PYTHON.format(
            no_ensurepip="" if ensurepip else "1",
            pip_log=root / "pip.log",
            real=sys.executable,
            version=repr(version),
        )
    )
    path.chmod(0o755)
    return str(path)


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(REPO / "Makefile", root / "Makefile")
    (root / "pyproject.toml").write_text("")
    (root / "constraints.txt").write_text("")
    return root


def _make(root: Path, python: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRIDPATROL_SHARED": str(root / "no-shared")}
    return subprocess.run(
        ["make", "--no-print-directory", "setup", f"PYTHON={python}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _venv_version(root: Path) -> str:
    done = subprocess.run(
        [str(root / ".venv" / "bin" / "python"), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _pip_calls(root: Path) -> list[str]:
    log = root / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


INSTALL = [
    "install -q --upgrade pip",
    "install -q -c constraints.txt -e .[ultralytics,dev]",
]


def test_a_setup_that_failed_in_ensurepip_is_made_again_once_the_venv_module_is_there(
    tmp_path: Path,
) -> None:
    root = _checkout(tmp_path)
    without_venv = _python(tmp_path, "python3", (3, 11, 2), ensurepip=False)
    failed = _make(root, without_venv)
    assert failed.returncode != 0
    assert "needs its venv module (Debian: python3-venv" in failed.stderr
    assert _pip_calls(tmp_path) == []

    # python3-venv installed: the next run makes the venv again instead of using the broken one.
    (root / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(without_venv, root / ".venv" / "bin" / "python")  # as an older make left it
    with_venv = _python(tmp_path, "python3", (3, 11, 2), ensurepip=True)
    done = _make(root, with_venv)
    assert done.returncode == 0, done.stderr
    assert (root / ".venv" / "bin" / "pip").exists()
    assert _pip_calls(tmp_path) == INSTALL

    # Nothing changed: nothing is made or installed again.
    again = _make(root, with_venv)
    assert again.returncode == 0, again.stderr
    assert "making .venv" not in again.stdout
    assert _pip_calls(tmp_path) == INSTALL


def test_a_venv_of_another_python_is_made_again_with_the_python_asked_for(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    old = _python(tmp_path, "python3", (3, 10, 12), ensurepip=True)
    subprocess.run([old, "-m", "venv", str(root / ".venv")], check=True)
    (root / ".venv" / ".installed").touch()  # a setup that passed on 3.10
    assert _venv_version(root) == "(3, 10)"

    done = _make(root, _python(tmp_path, "python3.11", (3, 11, 9), ensurepip=True))
    assert done.returncode == 0, done.stderr
    assert "making .venv with " in done.stdout and "(Python 3.11)" in done.stdout
    assert _venv_version(root) == "(3, 11)"
    assert _pip_calls(tmp_path) == INSTALL

    # Asked for the old one again: it is refused, and the 3.11 venv is left as it is.
    refused = _make(root, old)
    assert refused.returncode != 0
    assert "gridpatrol needs Python 3.11 or newer" in refused.stderr
    assert _venv_version(root) == "(3, 11)"


def test_a_whole_venv_from_before_the_stamp_is_kept_without_installing_again(
    tmp_path: Path,
) -> None:
    root = _checkout(tmp_path)
    python = _python(tmp_path, "python3", (3, 11, 7), ensurepip=True)
    subprocess.run([python, "-m", "venv", str(root / ".venv")], check=True)
    for stamp in (".installed", ".installed-dev"):  # the project, and the tests' full set
        (root / ".venv" / stamp).touch()
    done = _make(root, python)
    assert done.returncode == 0, done.stderr
    assert "making .venv" not in done.stdout
    assert _pip_calls(tmp_path) == []
    assert (root / ".venv" / ".python-version").read_text() == "3.11\n"


def _run(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# The venv's Python: this environment's, with the modules a venv the demo made lacks hidden
# (find_spec gives None, an import fails, for a module set to None): the ultralytics extra, and
# the development tools (psycopg, playwright) until the fake pip has installed the full set.
VENV_PYTHON = """\
#!/bin/sh
[ "$1" = -c ] || exit 2
exec {real} -c 'import os, sys
for name in {hidden} + ([] if os.path.exists("{dev_marker}") else {dev_only}):
    sys.modules[name] = None
exec(sys.argv[1])' "$2"
"""
DEV_ONLY = ["psycopg", "playwright"]
# The venv's pip: logs its arguments to pip.log; with a pause, it also logs to pip-spans.log
# when it starts and ends, taking a second in between, as a real install takes its time.
VENV_PIP = """\
#!/bin/sh
echo "$*" >> "{log}"
if [ -n "{pause}" ]; then echo "start $*" >> "{spans}"; sleep 1; echo "end $*" >> "{spans}"; fi
case "$*" in *"[ultralytics,dev]"*) touch "{dev_marker}";; esac
"""
DEMO_INSTALL = ["install -q --upgrade pip", "install -q -c constraints.txt -e ."]


def _demo_checkout(
    tmp_path: Path, *, pause: bool = False, hidden: tuple[str, ...] = ("ultralytics",)
) -> Path:
    """A checkout whose venv was made (pip and gridpatrol record their calls, the tools of the
    full set do nothing) but not set up."""
    root = _checkout(tmp_path)
    (root / "models").mkdir()
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    marker = root / ".venv" / "dev-tools-installed"
    (bin_dir / "python").write_text(
        VENV_PYTHON.format(
            real=sys.executable,
            hidden=json.dumps(list(hidden)),
            dev_only=json.dumps(DEV_ONLY),
            dev_marker=marker,
        )
    )
    (bin_dir / "pip").write_text(
        VENV_PIP.format(
            log=tmp_path / "pip.log",
            pause="1" if pause else "",
            spans=tmp_path / "pip-spans.log",
            dev_marker=marker,
        )
    )
    for tool in ("python", "pip"):
        (bin_dir / tool).chmod(0o755)
    for tool in ("gridpatrol", "ruff", "mypy", "pytest", "playwright"):
        _logging_tool(bin_dir, tool)
    return root


def _stamp(root: Path) -> None:
    """Mark the venv of a _demo_checkout set up with the full set, as ``make setup`` leaves it."""
    venv = root / ".venv"
    (venv / ".python-version").write_text(f"{sys.version_info.major}.{sys.version_info.minor}\n")
    for stamp in (".installed", ".installed-dev", "dev-tools-installed"):
        (venv / stamp).touch()


def _make_with(
    root: Path, target: str, shared: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``make target`` with the models the demo finds only where this test puts them."""
    defaults = {
        "GRIDPATROL_MODELS_DIR": str(root / "models"),
        "GRIDPATROL_CACHE": str(root.parent / "cache"),
        "GRIDPATROL_MODEL": "",
        "GRIDPATROL_OFFLINE": "",
        "GRIDPATROL_CHROMIUM": "/usr/bin/chromium",  # named: make browser installs none
    }
    return _run(
        root,
        *args,
        target,
        f"PYTHON={sys.executable}",
        **{**defaults, **env, "GRIDPATROL_SHARED": str(shared)},
    )


def _tool_calls(root: Path) -> list[str]:
    log = root / ".venv" / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def _demo_runs(root: Path) -> list[str]:
    return [call for call in _tool_calls(root) if call.startswith("gridpatrol ")]


def _pip_spans(tmp_path: Path) -> list[str]:
    return (tmp_path / "pip-spans.log").read_text().splitlines()


def _one_at_a_time(calls: list[str]) -> list[str]:
    return [f"{edge} {call}" for call in calls for edge in ("start", "end")]


TEST_TOOLS = ["ruff check .", "ruff format --check .", "mypy ", "pytest tests"]


def test_the_demo_and_the_tests_in_parallel_install_one_at_a_time(
    tmp_path: Path, shared_dir: Path
) -> None:
    """``make -j2 demo test`` on a fresh venv: two pips writing into one venv at once lose
    files (a real pair of ``pip install -e .`` left no .venv/bin/gridpatrol). The demo takes
    the tests' full install instead of its own, so there is one."""
    root = _demo_checkout(tmp_path, pause=True)
    done = _make_with(root, "test", shared_dir, "-j2", "demo")
    assert done.returncode == 0, done.stderr
    assert _pip_spans(tmp_path) == _one_at_a_time(INSTALL)
    assert _pip_calls(tmp_path) == INSTALL
    assert sorted(_tool_calls(root)) == sorted(["gridpatrol demo", *TEST_TOOLS])


def test_parallel_tests_after_the_demo_wait_for_the_full_install(
    tmp_path: Path, shared_dir: Path
) -> None:
    """After ``make demo`` (the project alone), ``make -j4 test``: the checks of the services
    and the browser import psycopg and playwright, which only the full set brings."""
    root = _demo_checkout(tmp_path, pause=True)
    assert _make_with(root, "demo", shared_dir).returncode == 0
    done = _make_with(root, "test", shared_dir, "-j4")
    assert done.returncode == 0, done.stderr
    assert _pip_spans(tmp_path) == _one_at_a_time(DEMO_INSTALL + INSTALL)
    assert _pip_calls(tmp_path) == DEMO_INSTALL + INSTALL
    assert sorted(_tool_calls(root)) == sorted(["gridpatrol demo", *TEST_TOOLS])


@pytest.mark.parametrize("target", ["services", "browser"])
def test_services_and_browser_after_the_demo_install_the_full_set_first(
    tmp_path: Path, shared_dir: Path, target: str
) -> None:
    """Not 'the tests need PostgreSQL' where psycopg is what is missing."""
    root = _demo_checkout(tmp_path)
    assert _make_with(root, "demo", shared_dir).returncode == 0
    done = _make_with(root, target, shared_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\ntouch .venv/.installed .venv/.installed-dev\n")
    assert _pip_calls(tmp_path) == DEMO_INSTALL + INSTALL


def test_the_demo_installs_the_project_alone_where_a_model_is_at_hand(
    tmp_path: Path, shared_dir: Path
) -> None:
    """The shared models linked into models/: no Ultralytics (PyTorch) for the demo; the tests'
    setup then tops the same venv up, and a demo after it installs nothing more."""
    root = _demo_checkout(tmp_path)
    done = _make_with(root, "demo", shared_dir)
    assert done.returncode == 0, done.stderr
    assert "no model at hand" not in done.stdout
    assert _pip_calls(tmp_path) == DEMO_INSTALL
    assert _demo_runs(root) == ["gridpatrol demo"]

    topped = _make_with(root, "setup", shared_dir)
    assert topped.returncode == 0, topped.stderr
    assert _pip_calls(tmp_path) == DEMO_INSTALL + INSTALL

    again = _make_with(root, "demo", shared_dir)
    assert again.returncode == 0, again.stderr
    assert _pip_calls(tmp_path) == DEMO_INSTALL + INSTALL
    assert _demo_runs(root) == ["gridpatrol demo", "gridpatrol demo"]


def test_the_demo_after_the_tests_setup_installs_nothing(tmp_path: Path, shared_dir: Path) -> None:
    root = _demo_checkout(tmp_path)
    assert _make_with(root, "setup", shared_dir).returncode == 0
    done = _make_with(root, "demo", shared_dir)
    assert done.returncode == 0, done.stderr
    assert _pip_calls(tmp_path) == INSTALL
    assert _demo_runs(root) == ["gridpatrol demo"]


@pytest.mark.parametrize(
    ("env", "cached"),
    [({}, False), ({"GRIDPATROL_OFFLINE": "1"}, True)],
    ids=["nothing-at-hand", "offline-weights-in-cache"],
)
def test_the_demo_installs_the_ultralytics_extra_where_no_model_is_at_hand(
    tmp_path: Path, env: dict[str, str], cached: bool
) -> None:
    """No shared models, nothing in models/ or the cache, or downloads off with the manifest's
    Ultralytics weights in the cache: the extra that downloads or exports the manifest's model
    is installed first, and the demo says so."""
    root = _demo_checkout(tmp_path)
    if cached:
        (tmp_path / "cache" / "models").mkdir(parents=True)
        (tmp_path / "cache" / "models" / "yolo11n.pt").write_bytes(b"weights")
    done = _make_with(root, "demo", tmp_path / "no-shared", **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        *(f".venv/bin/pip {call}" for call in DEMO_INSTALL),
        "touch .venv/.installed",
        "no model at hand (models/README.md): installing the ultralytics extra (PyTorch, "
        "several GB) to download and export one",
        ".venv/bin/gridpatrol demo",
    ]
    assert _pip_calls(tmp_path) == [
        *DEMO_INSTALL,
        "install -q -c constraints.txt -e .[ultralytics]",
    ]
    assert _demo_runs(root) == ["gridpatrol demo"]


def _incomplete_ir(root: Path) -> None:
    """The default's IR folder in models/ with its .xml and without its .bin."""
    folder = root / "models" / "yolo11n_int8_openvino_model"
    folder.mkdir()
    (folder / "yolo11n.xml").write_text("<net/>")


@pytest.mark.parametrize(
    ("env", "models_at_hand", "prepare", "said"),
    [
        (
            {"GRIDPATROL_MODEL": "/missing"},
            True,
            None,
            "model '/missing' (environment) does not exist: give an OpenVINO IR folder, an .xml,"
            " .onnx or .pt file, or one of ['yolo11n', 'yolov8n']",
        ),
        (
            {"GRIDPATROL_MODEL": "./mymodel.pt"},
            True,
            None,
            "model './mymodel.pt' (environment) does not exist: give an OpenVINO IR folder, an"
            " .xml, .onnx or .pt file, or one of ['yolo11n', 'yolov8n']",
        ),
        (
            {"GRIDPATROL_OFFLINE": "1"},
            False,
            None,
            "; downloads are off (GRIDPATROL_OFFLINE).\nFix one of:\n  1. put the OpenVINO IR"
            " folder yolo11n_int8_openvino_model/",
        ),
        (
            {},
            False,
            _incomplete_ir,
            "yolo11n_int8_openvino_model is an incomplete OpenVINO IR: yolo11n.xml is there but"
            " its weights yolo11n.bin are missing; copy the whole folder",
        ),
    ],
    ids=["model-missing", "unpublished-pt", "offline-no-model", "ir-without-bin"],
)
def test_the_demo_installs_no_pytorch_where_it_would_not_help(
    tmp_path: Path,
    shared_dir: Path,
    env: dict[str, str],
    models_at_hand: bool,
    prepare: object,
    said: str,
) -> None:
    """A GRIDPATROL_MODEL that does not exist, downloads forbidden with nothing at hand, an IR
    without its weights: installing the ultralytics extra (several GB) cannot help, so the demo
    stops with the resolver's reason instead of installing it and hiding that."""
    root = _demo_checkout(tmp_path)
    if callable(prepare):
        prepare(root)
    shared = shared_dir if models_at_hand else tmp_path / "no-shared"
    done = _make_with(root, "demo", shared, **env)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-2:] == [
        "the demo cannot run as it is (above), and the ultralytics extra was not installed: it"
        " would not help",
        done.stderr.splitlines()[-1],
    ]
    assert done.stderr.splitlines()[-1].endswith("demo] Error 1")
    assert "no model at hand" not in done.stdout
    assert _pip_calls(tmp_path) == DEMO_INSTALL
    assert _demo_runs(root) == []


def test_links_keeps_a_models_folder_of_its_own_and_links_the_rest(tmp_path: Path) -> None:
    """The no-weights message tells users to make ``models/<folder>``; ``make links`` keeps it."""
    root = _checkout(tmp_path)
    own = root / "models" / "yolov8n_int8_openvino_model"
    own.mkdir(parents=True)
    (own / "yolov8n.xml").write_text("mine")
    shared = tmp_path / "shared"
    for name in ("yolo11n_int8_openvino_model", "yolov8n_int8_openvino_model"):
        (shared / "models" / name).mkdir(parents=True)
    (shared / "footage").mkdir()

    done = _run(root, "links", GRIDPATROL_SHARED=str(shared))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "models/yolov8n_int8_openvino_model is a folder, not a link: kept, "
        f"{shared}/models/yolov8n_int8_openvino_model not linked\n"
    )
    assert not own.is_symlink()
    assert [p.name for p in own.iterdir()] == ["yolov8n.xml"]
    linked = root / "models" / "yolo11n_int8_openvino_model"
    assert linked.readlink() == shared / "models" / "yolo11n_int8_openvino_model"
    assert (root / "var" / "footage").readlink() == shared / "footage"
    assert sorted(p.name for p in (root / "models").iterdir()) == [
        "yolo11n_int8_openvino_model",
        "yolov8n_int8_openvino_model",
    ]


def test_links_stops_when_any_link_cannot_be_made(tmp_path: Path) -> None:
    """Not only the last model's link decides: a failure on the first one stops ``make links``."""
    root = _checkout(tmp_path)
    (root / "models").mkdir()
    shared = tmp_path / "shared"
    for name in ("a_openvino_model", "b_openvino_model"):
        (shared / "models" / name).mkdir(parents=True)
    (shared / "footage").mkdir()
    # An ln that cannot link the first folder (a full disk, a read-only models/).
    fake = tmp_path / "bin" / "ln"
    fake.parent.mkdir()
    real = shutil.which("ln")
    fake.write_text(
        '#!/bin/sh\ncase "$*" in *a_openvino_model*) echo "ln: refused" >&2; exit 1;; esac\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    path = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    done = _run(root, "links", GRIDPATROL_SHARED=str(shared), PATH=path)
    assert done.returncode != 0
    assert "ln: refused\n" in done.stderr
    assert not (root / "var" / "footage").exists()


def test_services_names_the_missing_shared_assets(tmp_path: Path) -> None:
    root = _demo_checkout(tmp_path)
    _stamp(root)
    missing = tmp_path / "elsewhere"
    done = _run(root, "services", f"PYTHON={sys.executable}", GRIDPATROL_SHARED=str(missing))
    assert done.returncode != 0
    assert done.stderr.splitlines()[0] == (
        f"the tests need the shared assets (models/, footage/, datasets/): {missing}/models is"
        " missing; put them at ../shared beside the checkout, or set GRIDPATROL_SHARED to their"
        " folder"
    )


def test_services_passes_with_the_shared_assets_beside_the_checkout(tmp_path: Path) -> None:
    """CI's layout: a clone with ``../shared`` beside it and no GRIDPATROL_SHARED set. The
    services the suite runs against are the real ones, reached with this environment's Python."""
    root = _demo_checkout(tmp_path)  # its Python is the one running the tests
    _stamp(root)
    for name in ("models", "footage", "datasets"):
        (tmp_path / "shared" / name).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("GRIDPATROL_SHARED", "SHARED")}
    done = subprocess.run(
        ["make", "--no-print-directory", "services", f"PYTHON={sys.executable}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def _logging_tool(folder: Path, name: str, status: int = 0) -> None:
    """``folder/name`` appends its arguments to ``folder/../calls.log`` and exits ``status``."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder.parent / "calls.log"
    (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit {status}\n')
    (folder / name).chmod(0o755)


def _browser(
    tmp_path: Path, *, apt_status: int, chromium_status: int = 1
) -> tuple[subprocess.CompletedProcess[str], str]:
    """``make browser`` where the `chromium` on PATH does not run (Ubuntu's snap stub, no
    snapd) and Playwright's Chromium is not installed yet; apt, sudo and Playwright are fakes."""
    # The full set installed, but `import playwright…` fails as where its Chromium is not there.
    root = _demo_checkout(tmp_path, hidden=("ultralytics", "playwright"))
    _stamp(root)
    tools = tmp_path / "bin"
    _logging_tool(tools, "chromium", chromium_status)
    _logging_tool(tools, "apt-get", apt_status)
    tools.joinpath("sudo").write_text('#!/bin/sh\nexec "$@"\n')
    tools.joinpath("sudo").chmod(0o755)
    path = f"{tools}{os.pathsep}{os.environ['PATH']}"
    env = {k: v for k, v in os.environ.items() if k != "GRIDPATROL_CHROMIUM"}
    done = subprocess.run(
        ["make", "--no-print-directory", "browser", f"PYTHON={sys.executable}"],
        cwd=root,
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    logs = [tmp_path / "calls.log", root / ".venv" / "calls.log"]
    calls = [line for log in logs if log.exists() for line in log.read_text().splitlines()]
    return done, "\n".join(c for c in calls if not c.startswith(("chromium", "python")))


def test_browser_installs_playwrights_chromium_where_the_apt_one_does_not_run(
    tmp_path: Path,
) -> None:
    done, calls = _browser(tmp_path, apt_status=0)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "installing Debian's chromium for the browser tests",
        "no chromium that runs (Ubuntu's is a snap): installing Playwright's Chromium",
    ]
    assert calls == (
        "apt-get update -qq\napt-get install -y -qq chromium\n"
        "playwright install --with-deps chromium"
    )


def test_browser_installs_playwrights_chromium_without_apt(tmp_path: Path) -> None:
    """No root and no sudo: Playwright's Chromium goes into the user's cache, without the
    system libraries (which the machine may have)."""
    done, calls = _browser(tmp_path, apt_status=100)
    assert done.returncode == 0, done.stderr
    assert calls == "apt-get update -qq\nplaywright install chromium"


def test_browser_installs_nothing_where_a_chromium_runs(tmp_path: Path) -> None:
    done, calls = _browser(tmp_path, apt_status=0, chromium_status=0)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, calls) == ("", "")
