#!/usr/bin/env bash
# The local sandbox: a private containerd, a test Kubernetes API server and simulated nodes.
# Without arguments it runs the scripted demo; `up --dir DIR` keeps it running for kubectl;
# `up --deploy ...` (and `demo --deploy`) run relaunch from its images through
# `kubectl apply -k manifests/base` instead of as processes.
# Installs what is missing first. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
ensure_packages
ensure_rust
cargo build --locked --release --bins
if [ $# -eq 0 ]; then
  set -- demo
fi
exec ./target/release/relaunch-sandbox "$@"
