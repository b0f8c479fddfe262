#!/usr/bin/env bash
# The whole test suite: build, type check, lint, then every vitest suite. Installs the
# Debian packages the suites need when run as root; otherwise names the apt-get line.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the suites use -> the Debian package that provides it.
declare -A NEEDED=(
  [cmd:cc]=gcc
  [cmd:python3]=python3
  [file:/usr/bin/python3]=python3
  [cmd:systemd-analyze]=systemd
  [cmd:systemd-nspawn]=systemd-container
  [cmd:mmdebstrap]=mmdebstrap
  [cmd:nsenter]=util-linux
  [cmd:setpriv]=util-linux
  [cmd:pgrep]=procps
  [cmd:lintian]=lintian
  [cmd:strip]=binutils
  [cmd:promtool]=prometheus
  [cmd:rpmbuild]=rpm
  [cmd:rpmlint]=rpmlint
  [file:/usr/include/tirpc/rpc/rpc.h]=libtirpc-dev
)

missing=()
for need in "${!NEEDED[@]}"; do
  case $need in
    cmd:*) command -v "${need#cmd:}" >/dev/null 2>&1 ;;
    file:*) [[ -e ${need#file:} ]] ;;
  esac || missing+=("${NEEDED[$need]}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | grep .)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    # Packages built from systemd's source are pinned to the installed systemd: installing
    # systemd-container must not upgrade the host's systemd and udev in place.
    systemd_version=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null || true)
    pinned=()
    for pkg in "${missing[@]}"; do
      if [[ -n $systemd_version && $pkg == systemd-container ]]; then pinned+=("$pkg=$systemd_version"); else pinned+=("$pkg"); fi
    done
    echo "test: installing ${pinned[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade "${pinned[@]}" || {
      echo "test: cannot install ${pinned[*]} without upgrading the host's systemd ($systemd_version)." >&2
      echo "  To allow the upgrade: apt-get install -y --no-install-recommends ${missing[*]}" >&2
      exit 1
    }
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
  console.log(`Tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} not run`);
' "$report" || true
rm -f "$report"
if [[ -d .ci-cache ]]; then
  echo "test: Debian root file systems cached in .ci-cache ($(du -sh .ci-cache | cut -f1)); rm -rf .ci-cache frees it"
fi
exit "$status"
