# Shared by the GPU-machine suites (sourced from the repository root): where results go and the
# commit they are stamped with, the abort without a GPU, the carried Node, the bundle and the
# staged launcher, the guard against another persistence daemon, and the read-only guard on the
# persistence mode.
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
COMMIT=${COMMIT:-$(cat .devcarry/commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)}
STAGE=$PWD/.devcarry/stage
command -v nvidia-smi >/dev/null || {
  echo "ABORT: no nvidia-smi here: this suite needs a GPU machine with the NVIDIA driver (see docs/architecture.md, "Benchmarks and the GPU suite")" >&2
  exit 2
}
NODE=$(command -v node || true)
if [[ -z $NODE ]]; then
  xz -dc .devcarry/node.xz >/tmp/node && chmod +x /tmp/node
  NODE=/tmp/node
fi
BUNDLE=dist/gpu-persistd.mjs
[[ -d node_modules/koffi ]] || BUNDLE=.devcarry/stage/usr/lib/gpu-persistd/gpu-persistd.mjs
echo '{}' >/tmp/gpd-config.json

# Aborts unless every GPU's persistence reads Enabled: the suites change no GPU setting.
persistence_enabled() {
  local modes
  modes=$(nvidia-smi --query-gpu=persistence_mode --format=csv,noheader)
  echo "persistence_mode ($1): $(tr '\n' ' ' <<<"$modes")"
  if grep -qv '^Enabled$' <<<"$modes"; then
    echo "ABORT: persistence does not read Enabled $1; this suite changes no GPU setting and will not run" >&2
    exit 2
  fi
}

# Stops a daemon of an earlier run of ours (a warm machine); aborts if NVIDIA's daemon runs.
only_ours() {
  pkill -TERM -f 'gpu-persistd.mjs' && sleep 1 || true
  if pgrep -f 'bin/nvidia-persistenced' >/dev/null; then echo "ABORT: a persistence daemon runs here" >&2; exit 2; fi
}

# The installed launcher as staged (its libuv settings and V8 flags), pointed at the carried
# Node and the staged bundle: /tmp/gpu-persistd-launcher.
stage_launcher() {
  sed -e "s#^exec [^ ]* #exec $NODE #" -e "s#/usr/lib/gpu-persistd/#$STAGE/usr/lib/gpu-persistd/#" \
    "$STAGE/usr/bin/gpu-persistd" >/tmp/gpu-persistd-launcher
  chmod +x /tmp/gpu-persistd-launcher
}
