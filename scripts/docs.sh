#!/usr/bin/env bash
# Serves the documentation site at http://127.0.0.1:8000 (rebuilt on every change);
# `bash scripts/docs.sh build` writes it to site/ instead. Strict: a broken link, a
# missing reference or an unknown name in an API page fails the build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export NO_MKDOCS_2_WARNING=1
if [ "${1:-serve}" = "build" ]; then
    exec .venv/bin/mkdocs build --strict "${@:2}"
fi
exec .venv/bin/mkdocs serve --strict "$@"
