#!/usr/bin/env bash
# Screenshots of the built site in headless Chromium, offline, at 1,400 px: what a reader sees of the pages
# with formulas and wide tables. Not part of the suite (it needs Chromium: apt-get install chromium).
#
#   python3 -m sphinx -W --keep-going -b html docs docs/_build/html
#   bash docs/screenshots.sh docs/_build/html /tmp/shots      # then look at /tmp/shots/*.png
set -euo pipefail
site=$(cd "${1:-docs/_build/html}" && pwd)
out=${2:-docs/_build/screenshots}
width=${WIDTH:-1400}
mkdir -p "$out"
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "screenshots.sh: no Chromium found (apt-get install chromium)" >&2
  exit 2
fi
for page in api/_autosummary/hdml_jax.losses.npair_loss api/synthesis study_losses study_regime configs benchmarks \
            api/_autosummary/hdml_jax.losses.multi_similarity_from_similarities; do
  name=$(echo "$page" | tr '/' '_')
  "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
    --virtual-time-budget=15000 --window-size="$width,3000" --screenshot="$out/$name.png" \
    "file://$site/$page.html" >/dev/null 2>&1
  echo "$out/$name.png"
done
