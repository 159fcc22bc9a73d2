#!/usr/bin/env bash
# `make lab`: JupyterLab from the project venv, with the ipykernel `rdc` (this venv's Python)
# registered, the widget / plotly / anywidget frontends checked, and the project's settings
# overrides (scripts/lab_settings/overrides.json: windowingMode none, no news or update check)
# installed into <venv>/share/jupyter/lab/settings/. Serves the repository root, so a notebook in
# notebooks/ runs with cwd notebooks/ and reads ../data/checkpoints/*.safetensors as written.
# Usage: scripts/lab.sh [extra jupyter lab args]     (VENV=path overrides .venv)
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$(pwd)"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    echo "lab.sh: no Python at $PY; create the venv first (make install) or set VENV=" >&2
    exit 1
fi

echo "lab.sh: checking the kernel- and server-side packages in $VENV"
"$PY" - <<'PYEOF'
import importlib.metadata as md
import sys

need = ["jupyterlab", "ipykernel", "ipywidgets", "jupyterlab_widgets", "anywidget", "plotly"]
missing = []
for name in need:
    try:
        print(f"lab.sh:   {name} {md.version(name)}")
    except md.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"lab.sh: missing {', '.join(missing)}; pip install -e '.[lab]'")
PYEOF

echo "lab.sh: registering ipykernel 'rdc' -> $PY (sys-prefix)"
"$PY" -m ipykernel install --sys-prefix --name rdc --display-name "Python (rdc)" >/dev/null

PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
SETTINGS="$PREFIX/share/jupyter/lab/settings"
mkdir -p "$SETTINGS"
if cmp -s scripts/lab_settings/overrides.json "$SETTINGS/overrides.json"; then
    echo "lab.sh: settings overrides already installed in $SETTINGS"
else
    if [ -f "$SETTINGS/overrides.json" ]; then
        cp "$SETTINGS/overrides.json" "$SETTINGS/overrides.json.bak"
        echo "lab.sh: previous overrides.json kept as overrides.json.bak"
    fi
    cp scripts/lab_settings/overrides.json "$SETTINGS/overrides.json"
    echo "lab.sh: installed settings overrides into $SETTINGS"
fi

# The three prebuilt frontends must come from this environment, else the notebook shows
# "Error displaying widget: model not found" (plotly#5027).
EXTENSIONS="$("$PY" -m jupyter labextension list 2>&1 || true)"
for ext in "@jupyter-widgets/jupyterlab-manager" "jupyterlab-plotly" "anywidget"; do
    if grep -q "$ext .*enabled.*OK" <<<"$(sed 's/\x1b\[[0-9;]*m//g' <<<"$EXTENSIONS")"; then
        echo "lab.sh: labextension $ext enabled"
    else
        echo "lab.sh: labextension $ext missing or broken; widgets will not render:" >&2
        echo "$EXTENSIONS" >&2
        exit 1
    fi
done

ARGS=(--ServerApp.root_dir="$REPO")
if [ "$(id -u)" -eq 0 ]; then ARGS+=(--allow-root); fi
echo "lab.sh: $PY -m jupyterlab ${ARGS[*]} $*"
exec "$PY" -m jupyterlab "${ARGS[@]}" "$@"
