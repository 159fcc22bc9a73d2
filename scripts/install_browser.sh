#!/usr/bin/env bash
# Install what the JupyterLab browser test (tests/browser, marker `browser`) needs:
# Debian's `chromium` (driven by the pip `playwright` package through executable_path;
# Playwright's own browser download cannot work on our network) plus fonts so that
# screenshots show readable text. Idempotent: does nothing when everything is present.
# Usage: bash scripts/install_browser.sh        (as root, or with sudo available)
set -euo pipefail

PKGS=(chromium fonts-liberation fonts-dejavu-core)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_browser: not root and no sudo; cannot apt-get install ${PKGS[*]}" >&2
        exit 1
    fi
fi

missing=()
for p in "${PKGS[@]}"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        echo "install_browser: $p already installed ($(dpkg-query -W -f='${Version}' "$p"))"
    else
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install_browser: apt-get not found; install ${missing[*]} by hand" >&2
        exit 1
    fi
    echo "install_browser: apt-get update"
    $SUDO apt-get update -qq
    echo "install_browser: apt-get install -y --no-install-recommends ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x /usr/bin/chromium ]; then
    echo "install_browser: /usr/bin/chromium missing after install" >&2
    exit 1
fi
echo "install_browser: $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium (version unknown)') at /usr/bin/chromium"

# The Python side: the playwright wheel (bundled Node driver, no browser download) must be
# importable from the interpreter that runs pytest.
PY="${PYTHON:-python3}"
if [ -x ".venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then PY=".venv/bin/python"; fi
if "$PY" -c "import playwright" >/dev/null 2>&1; then
    echo "install_browser: python playwright $("$PY" -c 'from importlib.metadata import version; print(version("playwright"))') found in $PY"
else
    echo "install_browser: WARNING: python package playwright not importable from $PY (pip install -e '.[lab]')" >&2
fi
