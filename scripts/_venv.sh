# Shared by scripts/test and scripts/bench (sourced, not run): messages, and a virtualenv with
# sitq installed in it, made or refreshed only when needed.
#
#   ensure_venv VENV SPEC [REQUIREMENTS]
#
# makes VENV with $PYTHON (default python3, 3.11 or newer) unless it already has a usable
# python, puts it first on PATH, and runs `pip install -e SPEC [-r REQUIREMENTS]` when
# pyproject.toml, REQUIREMENTS or the Python version changed since the last install (a stamp
# in VENV), when sitq is not installed, or when SITQ_FORCE_INSTALL=1. Sets PY to its python.
# The caller sets PROG (its name, for messages).

say() { printf '==> %s\n' "$*"; }
die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

ensure_venv() {
    local venv=$1 spec=$2 requirements=${3:-}
    local python="${PYTHON:-python3}"
    local version_ok='import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'
    PY="$venv/bin/python"
    if [ ! -x "$PY" ] || ! "$PY" -c "$version_ok" 2>/dev/null; then
        command -v "$python" >/dev/null 2>&1 || die "'$python' not found; install Python 3.11+ or set PYTHON"
        "$python" -c "$version_ok" || die "'$python' is $("$python" -V 2>&1); sitq needs Python 3.11+ (set PYTHON)"
        if [ -e "$venv" ]; then
            say "recreating $venv (its python is missing, broken or older than 3.11)"
            "$python" -m venv --clear "$venv" || die "could not recreate $venv"
        else
            say "creating $venv with $("$python" -V 2>&1)"
            "$python" -m venv "$venv" || die "could not create $venv (on Debian/Ubuntu: apt-get install python3-venv)"
        fi
    fi
    export VIRTUAL_ENV="$venv"
    export PATH="$venv/bin:$PATH"
    unset PYTHONHOME

    local stamp="$venv/.sitq-install-stamp" want
    want="$("$PY" -c 'import hashlib, sys
h = hashlib.sha256()
for name in ["pyproject.toml"] + sys.argv[1:]:
    h.update(open(name, "rb").read())
print(h.hexdigest(), sys.version.split()[0])' ${requirements:+"$requirements"})"
    local args=(-e "$spec")
    [ -z "$requirements" ] || args+=(-r "$requirements")
    if [ "${SITQ_FORCE_INSTALL:-}" = "1" ] \
        || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] \
        || ! "$PY" -c 'import importlib.metadata as m; m.distribution("sitq")' 2>/dev/null; then
        say "pip install ${args[*]}"
        local started=$SECONDS
        "$PY" -m pip install --quiet --disable-pip-version-check "${args[@]}" \
            || die "pip install ${args[*]} failed (see the errors above)"
        printf '%s\n' "$want" >"$stamp"
        say "installed in $((SECONDS - started)) s"
    else
        say "already installed in $venv (nothing changed; SITQ_FORCE_INSTALL=1 to redo)"
    fi
}
