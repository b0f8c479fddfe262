# Shared by the GPU-machine suites (sourced from the repository root): the abort without a GPU,
# the carried Node, the bundle, and the read-only guard on the persistence mode.
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
