#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real containerd that the tests
# start themselves. Installs what is missing first. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
ensure_packages
ensure_rust
ensure_python_client
cargo test --locked "$@"
