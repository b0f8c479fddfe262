"""The GPU-machine suites' read-only guard, shared by the Python ones: every GPU's persistence
must read Enabled before and after a suite, which changes no GPU setting (common.sh has the
shell's twin, persistence_enabled)."""
import subprocess
import sys


def persistence(when):
    modes = subprocess.run(["nvidia-smi", "--query-gpu=persistence_mode", "--format=csv,noheader"],
                           capture_output=True, text=True, check=True).stdout.split()
    if any(m != "Enabled" for m in modes):
        sys.exit(f"ABORT: persistence does not read Enabled {when}: {modes}; this suite changes no GPU setting")
    return modes
