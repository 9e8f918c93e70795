#!/usr/bin/env bash
# Re-fetch the page's third-party files from the npm registry into src/geovario/serve/static/vendor/.
# They are committed, so `geovario serve` needs no CDN and no network; run this only to update them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=src/geovario/serve/static/vendor
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent leaflet@1.9.4 topojson-client@3.1.0 world-atlas@2.0.2 >/dev/null)
for tgz in "$WORK"/*.tgz; do mkdir -p "${tgz%.tgz}" && tar xzf "$tgz" -C "${tgz%.tgz}"; done
rm -rf "$VENDOR" && mkdir -p "$VENDOR/leaflet/images" "$VENDOR/topojson-client" "$VENDOR/world-atlas"
cp "$WORK"/leaflet-1.9.4/package/dist/{leaflet.js,leaflet.css} "$WORK"/leaflet-1.9.4/package/LICENSE "$VENDOR/leaflet/"
cp "$WORK"/leaflet-1.9.4/package/dist/images/*.png "$VENDOR/leaflet/images/"
cp "$WORK"/topojson-client-3.1.0/package/dist/topojson-client.min.js "$WORK"/topojson-client-3.1.0/package/LICENSE "$VENDOR/topojson-client/"
# Natural Earth 1:110m country outlines (public domain), TopoJSON packaged by world-atlas (ISC).
cp "$WORK"/world-atlas-2.0.2/package/{countries-110m.json,LICENSE} "$VENDOR/world-atlas/"
(cd "$VENDOR" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
echo "vendored into $VENDOR"
