#!/usr/bin/env bash
# Fetch the CRDs listed in crds.tsv into $1 at their pinned commits; fail unless every checksum matches.
set -euo pipefail
dest="$1"
mkdir -p "$dest"
grep -v '^#' "$(dirname "$0")/crds.tsv" | while IFS=$'\t' read -r file repo commit path sha256; do
  curl --fail --silent --show-error --location --retry 3 \
    -o "$dest/$file" "https://raw.githubusercontent.com/$repo/$commit/$path"
  echo "$sha256  $dest/$file" | sha256sum --check --strict -
done
