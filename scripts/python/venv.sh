# Sourced by scripts/test.sh and scripts/compat.sh: `make_venv DIR PACKAGE...` creates a venv at
# DIR (with $PYTHON, default python3) unless it exists, and installs the packages pinned by
# scripts/python/constraints.txt, transitive dependencies included. Nothing goes into the system
# interpreter, so it works where that refuses installs (PEP 668's EXTERNALLY-MANAGED).
# Returns non-zero, with what to install, when a venv cannot be made.
make_venv() {
    local dir="$1"
    shift
    local python="${PYTHON:-python3}"
    local constraints
    constraints="$(dirname "${BASH_SOURCE[0]}")/constraints.txt"
    if [ ! -x "$dir/bin/python" ]; then
        if ! command -v "$python" > /dev/null; then
            echo "venv: $python not found: install Python 3 (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2
            return 1
        fi
        if ! "$python" -m venv "$dir" > /dev/null 2>&1; then
            rm -rf "$dir"
            echo "venv: '$python -m venv' failed: install the venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
            return 1
        fi
    fi
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@"
}
