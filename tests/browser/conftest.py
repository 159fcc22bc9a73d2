"""Fixtures for the JupyterLab browser tests (marker ``browser``).

* ``chromium``: Debian's ``/usr/bin/chromium`` (``scripts/install_browser.sh``) driven by the pip
  ``playwright`` package through ``executable_path`` (Playwright's own browser download cannot
  work on our network). If Playwright or Chromium is missing or cannot launch, the test is skipped
  with a loud reason: a ``BrowserUnavailableWarning``, the skip message, and a banner in pytest's
  terminal summary. ``RDC_REQUIRE_BROWSER=1`` turns that skip into a failure (for CI, where
  ``scripts/install_browser.sh`` has run). ``RDC_CHROMIUM`` overrides the executable path.
* ``lab_server``: one JupyterLab server for the session, on 127.0.0.1 with a free port and a random
  token, ``--allow-root``, temp HOME / config / data / runtime / workspaces / user-settings dirs,
  ``scripts/lab_settings/overrides.json`` as the app settings (windowingMode none, no news), and a
  temp root directory that mirrors the repository (see ``LabRoot``).

Where the notebooks run (the root-dir decision): the notebooks import ``rdc_lib`` from the venv and
read ``../data/checkpoints/*.safetensors`` relative to their own folder (the kernel's cwd is the
notebook's folder). Serving the repository itself would let JupyterLab autosave outputs into the
committed notebooks, so the server root is a temp directory whose top-level entries are symlinks to
the repository's (``data``, ``rdc_lib``, ``notebooks``, ...; hidden entries and ``artifacts`` are
left out). ``LabRoot.stage(path)`` turns the symlinked folders on the way to a notebook into real
folders (their other children stay symlinks) and copies the files of the notebook's own folder, so
relative paths resolve exactly as in the repository while everything JupyterLab writes (outputs,
``.ipynb_checkpoints``, files the notebook writes next to itself) lands in the temp copy. Writes
through ``../<dir>`` still reach the repository through the symlinks.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "artifacts" / "browser"
OVERRIDES_JSON = REPO_ROOT / "scripts" / "lab_settings" / "overrides.json"
CHROMIUM_PATH = os.environ.get("RDC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1400, "height": 1000}
SERVER_START_TIMEOUT_S = 120.0
# Top-level repository entries not mirrored into the server root.
ROOT_EXCLUDE = {"artifacts", "build", "__pycache__"}

_SKIP_REASONS: list[str] = []


class BrowserUnavailableWarning(UserWarning):
    """Chromium or Playwright is missing: the browser tests did not run."""


def skip_loudly(reason: str) -> None:
    """Skip (or fail, with ``RDC_REQUIRE_BROWSER=1``) a browser test, never silently."""
    message = f"BROWSER TEST NOT RUN: {reason}"
    _SKIP_REASONS.append(message)
    warnings.warn(message, BrowserUnavailableWarning, stacklevel=2)
    print(f"\n*** {message} ***", file=sys.stderr, flush=True)
    if os.environ.get("RDC_REQUIRE_BROWSER", "") not in ("", "0"):
        pytest.fail(f"{message} (RDC_REQUIRE_BROWSER is set)", pytrace=False)
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """Repeat every browser skip reason as a banner at the end of the run."""
    if not _SKIP_REASONS:
        return
    terminalreporter.section("BROWSER TESTS NOT RUN", sep="!", red=True, bold=True)
    for reason in dict.fromkeys(_SKIP_REASONS):
        terminalreporter.write_line(reason, red=True, bold=True)
    terminalreporter.write_line("install with: bash scripts/install_browser.sh (and pip install -e '.[lab]')")


# ----------------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``artifacts/browser/`` at the repository root (gitignored), created on demand."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def browser_viewport() -> dict[str, int]:
    """Page size for the JupyterLab tests (room for the explorer beside the notebook)."""
    return dict(VIEWPORT)


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """A launched headless Chromium (playwright ``Browser``); skips loudly when unavailable."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        skip_loudly(f"python package playwright not importable ({exc}); pip install -e '.[lab]'")
    if not (os.path.isfile(CHROMIUM_PATH) and os.access(CHROMIUM_PATH, os.X_OK)):
        skip_loudly(f"no Chromium executable at {CHROMIUM_PATH}; run scripts/install_browser.sh")
    manager = sync_playwright()
    try:
        playwright = manager.start()
    except Exception as exc:  # the bundled Node driver failed to start
        skip_loudly(f"playwright driver failed to start: {exc!r}")
    try:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS, headless=True, timeout=60_000
        )
    except Exception as exc:
        playwright.stop()
        skip_loudly(f"Chromium at {CHROMIUM_PATH} could not be launched by playwright: {exc!r}")
    try:
        yield browser
    finally:
        browser.close()
        playwright.stop()


# ------------------------------------------------------------------------------- lab server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabRoot:
    """Temp server root mirroring the repository (symlinks), with real copies of staged folders."""

    path: Path
    repo: Path = REPO_ROOT

    def __post_init__(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.repo.iterdir()):
            if entry.name.startswith(".") or entry.name in ROOT_EXCLUDE:
                continue
            (self.path / entry.name).symlink_to(entry)

    def _unfold(self, rel_dir: Path) -> Path:
        """Make every folder on ``rel_dir`` a real folder whose other children are symlinks."""
        here = self.path
        source = self.repo
        for part in rel_dir.parts:
            here, source = here / part, source / part
            if here.is_symlink():
                here.unlink()
            if not here.exists():
                here.mkdir()
                for child in sorted(source.iterdir()):
                    if child.name.startswith(".") or child.name in ROOT_EXCLUDE:
                        continue
                    child_link = here / child.name
                    if not child_link.exists() and not child_link.is_symlink():
                        child_link.symlink_to(child)
        return here

    def stage(self, notebook: str) -> str:
        """Copy the files of ``notebook``'s folder (repo-relative) into the root; return its path."""
        rel = Path(notebook)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"notebook path must be relative to the repository, got {notebook!r}")
        source = self.repo / rel
        if not source.is_file():
            raise FileNotFoundError(f"notebook {notebook!r} not found under {self.repo}")
        target_dir = self._unfold(rel.parent)
        for child in sorted(source.parent.iterdir()):
            target = target_dir / child.name
            if child.is_file() and target.is_symlink():
                target.unlink()
                shutil.copy2(child, target)
        return rel.as_posix()


@dataclass
class LabServer:
    """A running JupyterLab: base ``url`` (no trailing slash), ``token``, ``root``, ``log`` file."""

    url: str
    token: str
    root: LabRoot
    log: Path
    process: subprocess.Popen = field(repr=False)

    def api(self, method: str, endpoint: str, timeout: float = 10.0) -> object:
        """JSON answer of the REST ``endpoint`` ('/api/...'), authenticated with the token."""
        request = urllib.request.Request(
            self.url + endpoint, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def lab_url(self, notebook: str) -> str:
        return f"{self.url}/lab/tree/{notebook}?token={self.token}"

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "<no server log>"

    def shutdown_kernels(self) -> None:
        """Delete every session (and so its kernel): frees the 2 shared cores between notebooks."""
        try:
            for session in self.api("GET", "/api/sessions") or []:
                self.api("DELETE", f"/api/sessions/{session['id']}")
        except (urllib.error.URLError, OSError, ValueError):
            pass


def _server_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    home = base / "home"
    dirs = {
        "HOME": home,
        "JUPYTER_CONFIG_DIR": home / ".jupyter",
        "JUPYTER_DATA_DIR": home / ".local" / "share" / "jupyter",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
        "IPYTHONDIR": home / ".ipython",
    }
    for name, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = "1"  # the kernels share 2 loaded cores
    # Both kernel names a notebook may carry resolve to this interpreter: 'python3' (jupyter_client
    # maps argv[0] 'python' to sys.executable) and 'rdc' (what scripts/lab.sh registers).
    spec_dir = dirs["JUPYTER_DATA_DIR"] / "kernels" / "rdc"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (rdc)",
        "language": "python",
        "metadata": {"debugger": True},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return env


def _start_server(base: Path, root: LabRoot, port: int) -> LabServer:
    token = secrets.token_hex(16)
    settings = base / "app_settings"
    settings.mkdir(exist_ok=True)
    shutil.copy2(OVERRIDES_JSON, settings / "overrides.json")
    log = base / f"jupyterlab-{port}.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--port-retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root.path}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.app_settings_dir={settings}",
        f"--LabApp.workspaces_dir={base / 'workspaces'}",
        f"--LabApp.user_settings_dir={base / 'user_settings'}",
        "--allow-root",
    ]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=root.path,
            env=_server_env(base),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LabServer(url=f"http://127.0.0.1:{port}", token=token, root=root, log=log, process=process)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"jupyter lab exited with code {process.returncode} before answering; log:\n{server.log_tail()}"
            )
        try:
            server.api("GET", "/api/status", timeout=5.0)
            return server
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.5)
    _stop(process)
    raise RuntimeError(
        f"jupyter lab did not answer /api/status within {SERVER_START_TIMEOUT_S:.0f} s; log:\n{server.log_tail()}"
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM: jupyter_server shuts its kernels down
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory, chromium) -> Iterator[LabServer]:  # noqa: ARG001
    """JupyterLab serving a mirror of the repository (requested after ``chromium``: no browser,
    no server start)."""
    try:
        import jupyterlab  # noqa: F401
    except ImportError as exc:
        skip_loudly(f"jupyterlab not importable ({exc}); pip install -e '.[lab]'")
    base = tmp_path_factory.mktemp("lab")
    root = LabRoot(base / "root")
    errors = []
    for _attempt in range(3):  # a free port can be taken between the probe and the bind
        try:
            server = _start_server(base, root, _free_port())
            break
        except RuntimeError as exc:
            errors.append(str(exc))
    else:
        pytest.fail("could not start jupyter lab:\n" + "\n---\n".join(errors), pytrace=False)
    try:
        yield server
    finally:
        server.shutdown_kernels()
        _stop(server.process)
