#!/bin/sh
# Print the path of a working Python 3.12 interpreter for the tools environment
# (.venv-tools, `make tools-env`); exit 1, printing nothing, when there is none.
# Looks at `python3.12` on PATH (a pyenv shim there may fail: it is run to check), then at
# the newest ~/.pyenv/versions/3.12*/bin/python3.12.
if python3.12 --version >/dev/null 2>&1; then
    exec python3.12 -c 'import sys; print(sys.executable)'
fi
for candidate in $(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | sort -r -V); do
    if "$candidate" --version >/dev/null 2>&1; then
        echo "$candidate"
        exit 0
    fi
done
exit 1
