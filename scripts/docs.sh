#!/usr/bin/env bash
# The documentation site (MkDocs): `bash scripts/docs.sh` builds it strictly into site/ (a broken link, a missing
# page or an API name that no longer exists fails); `bash scripts/docs.sh serve` serves it on 127.0.0.1:8000.
# Its own venv (.venv-docs): mkdocs-material needs a newer `requests` than torchattacks allows, and the API pages
# are read from the source (mkdocstrings' static analysis), so nothing of the package's own stack is needed.
set -euo pipefail
export NO_MKDOCS_2_WARNING=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
requirements=("mkdocs>=1.6,<2" "mkdocs-material>=9.5,<10" "mkdocstrings[python]>=0.26,<2")
stamp=.venv-docs/.installed
if [[ ! -x .venv-docs/bin/python ]]; then
  "$python" -m venv .venv-docs
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]]; then
  echo "docs: installing MkDocs into .venv-docs"
  .venv-docs/bin/python -m pip install -q --disable-pip-version-check "${requirements[@]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "${requirements[*]}" > "$stamp"
fi

if [[ "${1:-build}" == serve ]]; then
  exec .venv-docs/bin/mkdocs serve --strict "${@:2}"
fi
exec .venv-docs/bin/mkdocs build --strict --site-dir "${SITE_DIR:-site}" "${@:2}"
