#!/usr/bin/env bash
# `pip install .` as the README shows it (offline: a venv over Debian's site packages, no build
# isolation), reusing the build directory; then the installed package, not build/python, is
# imported and used.
set -euo pipefail
src="$1" build="$2" python="${3:-/usr/bin/python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv --system-site-packages "$tmp/venv"
(cd "$tmp" && WEIGHTCAST_BUILD_DIR="$build" "$tmp/venv/bin/pip" install -q --no-build-isolation "$src")
cd "$tmp"
env -u PYTHONPATH "$tmp/venv/bin/python" - "$tmp/venv" <<'PY'
import sys
import weightcast
import weightcast.torch
assert weightcast.__file__.startswith(sys.argv[1]), weightcast.__file__
assert weightcast._native.__file__.startswith(sys.argv[1]), weightcast._native.__file__
cfg = weightcast.JobConfig("t.json", "i.json", "c.json")
assert cfg.backend == "fabric"
print("pip install OK:", weightcast.__file__)
PY
