#!/usr/bin/env bash
# The whole test suite: build, type check, lint, then every vitest suite. Run as root, it
# installs the Debian packages the suites need, as a good guest: it upgrades no installed
# package, and enables and starts no service; the suite checks both at its end. Otherwise
# it names the apt-get line.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the suites use -> the Debian package that provides it (the README lists them).
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
  [cmd:rpmbuild]=rpm
  [cmd:rpmlint]=rpmlint
  [file:/usr/include/tirpc/rpc/rpc.h]=libtirpc-dev
)
# promtool comes with Debian's prometheus, whose install would enable and start a Prometheus
# server on the host: only its promtool is unpacked here (test/prometheus finds it there).
PROMTOOL_DIR=.ci-cache/prometheus
PROMTOOL=$PROMTOOL_DIR/usr/bin/promtool

# Installed packages only ("ii", "hi", ...), not those dpkg merely knows of; byte order
# throughout (LC_ALL=C), as join and comm below expect.
packages() { dpkg-query -W -f='${db:Status-Abbrev} ${Package}:${Architecture} ${Version}\n' | awk '$1 ~ /^.i/ {print $2, $3}' | LC_ALL=C sort; }
# Without systemctl before the install (no systemd yet), what is enabled cannot be compared.
HAS_SYSTEMCTL=$(command -v systemctl || true)
enabled_units() {
  [[ -z $HAS_SYSTEMCTL ]] || systemctl --root=/ list-unit-files --state=enabled --no-legend --no-pager | awk '{print $1}' | LC_ALL=C sort
}

POLICY=/usr/sbin/policy-rc.d
saved_policy=""
restore_policy() {
  if [[ -e $saved_policy ]]; then mv -f "$saved_policy" "$POLICY"; else rm -f "$POLICY"; fi
}

# Installs "$@" without upgrading an installed package: apt-get -s shows what the install
# would do; a package it would upgrade is pinned to its installed version, and where the
# archive no longer has that version, nothing is installed and the cause is named.
install_without_upgrades() {
  local -a install=("$@") pins=()
  local plan upgrades
  plan=$(apt-get -s install --no-install-recommends --no-upgrade "${install[@]}" 2>&1) || {
    echo "test: apt-get cannot install ${install[*]}:" >&2
    echo "$plan" | grep -E '^(E:| )' >&2 || true
    return 1
  }
  # "Remv NAME [...]": the install would remove a package the host has.
  if grep -q '^Remv ' <<<"$plan"; then
    echo "test: installing ${install[*]} would remove packages this host has; npm test removes nothing:" >&2
    grep '^Remv ' <<<"$plan" | sed 's/^Remv /    /' >&2
    echo "  install the suites' packages yourself if that is what you want: apt-get install -y --no-install-recommends ${install[*]}" >&2
    return 1
  fi
  # "Inst NAME [INSTALLED] (NEW ...)": an upgrade of a package the host has.
  upgrades=$(echo "$plan" | sed -nE 's/^Inst ([^ ]+) \[([^]]+)\] \(([^ ]+) .*/\1 \2 \3/p')
  if [[ -n $upgrades ]]; then
    while read -r name installed _; do pins+=("$name=$installed"); done <<<"$upgrades"
    if ! apt-get -s install --no-install-recommends --no-upgrade "${install[@]}" "${pins[@]}" >/dev/null 2>&1; then
      echo "test: installing ${install[*]} would upgrade packages this host has, and apt finds no way" >&2
      echo "  to keep their installed versions (the archive may no longer have them):" >&2
      while read -r name installed new; do echo "    $name $installed -> $new" >&2; done <<<"$upgrades"
      echo "  npm test upgrades nothing. Either bring the host up to date first (apt-get upgrade)," >&2
      echo "  or install the suites' packages yourself, upgrades included:" >&2
      echo "    apt-get install -y --no-install-recommends ${install[*]}" >&2
      return 1
    fi
    install+=("${pins[@]}")
    echo "test: keeping the installed versions of what the install would upgrade: ${pins[*]}"
  fi
  echo "test: installing ${*}"
  # A policy-rc.d that refuses every start, in place of the host's own for the install's
  # length: postinst scripts start no service on the host.
  saved_policy=$(mktemp)
  if [[ -e $POLICY ]]; then cp -p "$POLICY" "$saved_policy"; else rm -f "$saved_policy"; fi
  trap restore_policy EXIT
  printf '#!/bin/sh\n# npm test (gpu-persistd): no service starts during its package install\nexit 101\n' >"$POLICY"
  chmod 0755 "$POLICY"
  local before status=0
  before=$(enabled_units)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade "${install[@]}" || status=$?
  restore_policy
  trap - EXIT
  # What the packages enabled (systemd-container: machines.target) is disabled again.
  local unit
  for unit in $(LC_ALL=C comm -13 <(echo "$before") <(enabled_units)); do
    echo "test: disabling $unit, which the install enabled"
    systemctl --root=/ disable --quiet "$unit"
  done
  return "$status"
}

# promtool alone, from the prometheus package: downloaded and unpacked, never installed.
unpack_promtool() {
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) || {
    echo "test: cannot download Debian's prometheus package (for promtool): apt-get download prometheus" >&2
    rm -rf "$tmp"
    return 1
  }
  mkdir -p "$PROMTOOL_DIR"
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$PROMTOOL_DIR" ./usr/bin/promtool
  rm -rf "$tmp"
  echo "test: promtool unpacked into $PROMTOOL (from $(cd "$PROMTOOL_DIR" && ./usr/bin/promtool --version 2>&1 | head -1))"
}

missing=()
for need in "${!NEEDED[@]}"; do
  case $need in
    cmd:*) command -v "${need#cmd:}" >/dev/null 2>&1 ;;
    file:*) [[ -e ${need#file:} ]] ;;
  esac || missing+=("${NEEDED[$need]}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | grep .)
need_promtool=""
[[ -x $PROMTOOL ]] || command -v promtool >/dev/null 2>&1 || need_promtool=1

packages_before=$(packages)
units_before=$(enabled_units)
if ((${#missing[@]})) || [[ -n $need_promtool ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "test: missing what the suites need; as root:" >&2
    if ((${#missing[@]})); then echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2; fi
    [[ -z $need_promtool ]] || echo "  promtool: run this script as root once (it unpacks it into $PROMTOOL_DIR)" >&2
    exit 1
  fi
  apt-get update -qq
  if ((${#missing[@]})); then install_without_upgrades "${missing[@]}" || exit 1; fi
  [[ -z $need_promtool ]] || unpack_promtool || exit 1
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

# A good guest: every package the host had keeps its version, and no unit is newly enabled.
changed=$(LC_ALL=C join -j1 <(echo "$packages_before") <(packages) | awk '$2 != $3 {print "  " $1 " " $2 " -> " $3}')
gone=$(LC_ALL=C comm -23 <(echo "$packages_before" | cut -d' ' -f1) <(packages | cut -d' ' -f1) | sed 's/^/  /')
enabled=$(LC_ALL=C comm -13 <(echo "$units_before") <(enabled_units) | sed 's/^/  /')
if [[ -n $changed$gone$enabled ]]; then
  echo "test: FAILED: the run changed the host:" >&2
  [[ -z $changed ]] || printf 'packages upgraded or downgraded:\n%s\n' "$changed" >&2
  [[ -z $gone ]] || printf 'packages removed:\n%s\n' "$gone" >&2
  [[ -z $enabled ]] || printf 'units enabled:\n%s\n' "$enabled" >&2
  status=1
fi
if [[ -d .ci-cache ]]; then
  echo "test: Debian root file systems and promtool cached in .ci-cache ($(du -sh .ci-cache/ | cut -f1)); rm -rf .ci-cache frees it"
fi
exit "$status"
