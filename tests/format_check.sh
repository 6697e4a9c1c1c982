#!/usr/bin/env bash
# Every C++ file follows .clang-format (Google base, 100 columns).
set -u
cd "$1" || exit 1
command -v clang-format >/dev/null || { echo "SKIP: clang-format not installed"; exit 77; }
bad=$(git ls-files '*.cpp' '*.h' '*.cu' | while read -r f; do clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || echo "$f"; done)
if [ -n "$bad" ]; then echo "not clang-formatted (run clang-format -i):"; echo "$bad"; echo "0 passed, 1 failed"; exit 1; fi
echo "1 passed, 0 failed"
