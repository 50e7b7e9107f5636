#!/usr/bin/env bash
# Build the documentation site with every warning an error, then run its doctests.
#
#   bash docs/build.sh            -> docs/_build/html/index.html
#
# Installs what it needs when missing: the package's `docs` extra (pip), npm (apt-get)
# and MathJax (the npm package, pinned and checksummed below), because the site is
# built and viewed offline: no CDN, no remote intersphinx.
set -euo pipefail

DOCS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$DOCS")"
MATHJAX_VERSION=3.2.2
MATHJAX_SHA1=c754d7b46a679d7f3fa03543d6b8bf124ddf9f6b  # npm's dist.shasum of mathjax-3.2.2.tgz

if ! python -c "import sphinx, furo, myst_parser, matplotlib, backlink" 2>/dev/null; then
  python -m pip install --quiet -e "$ROOT[docs]"
fi

vendor="$DOCS/_vendor/mathjax"
if [ ! -f "$vendor/es5/tex-mml-chtml.js" ]; then
  if ! command -v npm >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "mathjax@$MATHJAX_VERSION" >/dev/null)
  echo "$MATHJAX_SHA1  $tmp/mathjax-$MATHJAX_VERSION.tgz" | sha1sum --check --quiet
  mkdir -p "$vendor"
  # Only the CommonHTML bundle and its fonts: what conf.py copies into the site.
  tar -xzf "$tmp/mathjax-$MATHJAX_VERSION.tgz" -C "$vendor" --strip-components=1 \
      package/es5/tex-mml-chtml.js package/es5/output/chtml/fonts
fi

cd "$ROOT"
# -E: read every page again, so warnings of unchanged pages are not hidden by the cache.
sphinx-build -E -W --keep-going -b html docs docs/_build/html
sphinx-build -E -W --keep-going -b doctest docs docs/_build/doctest
