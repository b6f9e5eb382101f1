#!/usr/bin/env bash
# Client SDKs from openapi/openapi.yaml (see README, "Client SDKs").
#
#   scripts/sdk.sh tools                 install the pinned generators, only when their pins changed
#   scripts/sdk.sh generate [PY_DIR TS_FILE]
#                                        generate the Python client into PY_DIR and the TypeScript
#                                        types into TS_FILE (default: client-sdks/python and
#                                        client-sdks/typescript/src/schema.ts, which git ignores)
#
# Generation is deterministic, and a target whose content would not change is left untouched;
# one that changes is swapped in by rename, so a test run importing it never sees half of it.
#
# Python: openapi-python-client, pinned with everything it imports in
# client-sdks/generator/requirements.txt, in its own virtualenv (client-sdks/.tools/venv) so that
# its ruff never changes the project's. TypeScript: openapi-typescript, pinned in
# client-sdks/typescript/package-lock.json, installed with `npm ci`. Hand-written Python helpers in
# client-sdks/extras/python/ are copied into the generated package.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SPEC="$ROOT/openapi/openapi.yaml"
SDKS="$ROOT/client-sdks"
TOOLS="$SDKS/.tools"
GEN_VENV="$TOOLS/venv"
GEN_REQUIREMENTS="$SDKS/generator/requirements.txt"
TS_DIR="$SDKS/typescript"
PYTHON="${PYTHON:-python3}"

digest() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Without Node the TypeScript client is left out (its tests skip); the Python one still works.
have_node() { command -v node >/dev/null && command -v npm >/dev/null; }

python_tools() {
    local want
    want="$(digest "$GEN_REQUIREMENTS")"
    if [[ -f "$GEN_VENV/.stamp" && "$(cat "$GEN_VENV/.stamp")" == "$want" ]]; then
        return
    fi
    rm -rf "$GEN_VENV"
    "$PYTHON" -m venv "$GEN_VENV"
    "$GEN_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps -r "$GEN_REQUIREMENTS"
    echo "$want" >"$GEN_VENV/.stamp"
}

node_tools() {
    local want
    if ! have_node; then
        echo "sdk.sh: node or npm not found: leaving out the TypeScript client" >&2
        return
    fi
    want="$(digest "$TS_DIR/package.json" "$TS_DIR/package-lock.json")"
    if [[ -f "$TS_DIR/node_modules/.stamp" && "$(cat "$TS_DIR/node_modules/.stamp")" == "$want" ]]; then
        return
    fi
    (cd "$TS_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
    echo "$want" >"$TS_DIR/node_modules/.stamp"
}

generate_python() {
    local out="$1" work
    work="$(mktemp -d "$(dirname "$out")/.python-client.XXXXXX")"
    # The generator runs its ruff hooks by name: put its own ruff first on PATH.
    PATH="$GEN_VENV/bin:$PATH" "$GEN_VENV/bin/openapi-python-client" generate \
        --path "$SPEC" \
        --config "$SDKS/generator/python-client.yaml" \
        --meta uv \
        --output-path "$work/client" \
        --overwrite \
        --fail-on-warning >"$work/log" 2>&1 || { cat "$work/log" >&2; rm -rf "$work"; return 1; }
    # Hand-written helpers that ship with the generated package (webhook signatures).
    cp "$SDKS"/extras/python/*.py "$work/client/email_service_client/"
    if [[ -d "$out" ]] && diff -rq -x __pycache__ "$out" "$work/client" >/dev/null; then
        rm -rf "$work"
        return
    fi
    [[ -d "$out" ]] && mv "$out" "$work/old"
    mv "$work/client" "$out"
    rm -rf "$work"
}

generate_typescript() {
    local out="$1" work
    work="$(mktemp "$(dirname "$out")/.schema.XXXXXX")"
    # --default-non-nullable false: a default is applied by the server, so a request field
    # with one stays optional for the caller.
    "$TS_DIR/node_modules/.bin/openapi-typescript" "$SPEC" \
        --default-non-nullable false \
        --output "$work" >/dev/null || { rm -f "$work"; return 1; }
    if cmp -s "$work" "$out"; then
        rm -f "$work"
    else
        chmod 644 "$work"
        mv "$work" "$out"
    fi
}

case "${1:-}" in
tools)
    python_tools
    node_tools
    ;;
generate)
    python_tools
    node_tools
    py_out="${2:-$SDKS/python}"
    ts_out="${3:-$TS_DIR/src/schema.ts}"
    generate_python "$py_out"
    if have_node; then
        generate_typescript "$ts_out"
    fi
    ;;
*)
    echo "usage: $0 tools | generate [PY_DIR TS_FILE]" >&2
    exit 2
    ;;
esac
