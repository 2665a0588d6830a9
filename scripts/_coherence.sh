# Sourced by the pipeline scripts: sets $coherence to the project's venv command (or the one on PATH) and puts its
# folder first on PATH, so `run:` backlog items can call `coherence` and `python` from the same installation.
venv_coherence="$(dirname "$0")/../.venv/bin/coherence"
if [ -x "$venv_coherence" ]; then
    coherence="$venv_coherence"
elif command -v coherence >/dev/null 2>&1; then
    coherence="$(command -v coherence)"
else
    echo "coherence not found: run 'make run' once to create .venv, or install the package" >&2
    exit 2
fi
PATH="$(cd "$(dirname "$coherence")" && pwd):$PATH"
export PATH
