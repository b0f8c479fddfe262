#!/usr/bin/env bash
# The whole test suite: build, type check, lint, then every vitest suite. Installs the
# Debian packages the suites need when run as root; otherwise names the apt-get line.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
declare -A NEEDED=(
  [cc]=gcc
  [python3]=python3
  [systemd-analyze]=systemd
  [systemd-nspawn]=systemd-container
  [mmdebstrap]=mmdebstrap
  [nsenter]=util-linux
  [pgrep]=procps
)

missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "test: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "test: missing packages; install them with:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

[[ -d node_modules ]] || npm ci
npm run --silent build
npx tsc --noEmit
npx biome check .
report=$(mktemp)
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" || status=$?
# One plain closing line that any CI reads, whatever the runner.
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`Tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped`);
' "$report" || true
rm -f "$report"
exit "$status"
