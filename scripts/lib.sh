# Shared by the scripts the README and CI run: install what is missing, nothing more.
# shellcheck shell=bash

die() { echo "error: $*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" -eq 0 ] || die "this needs root (it runs a private containerd): run it with sudo"
}

# Debian packages the test bed needs, installed only when something is missing.
ensure_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v ctr >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  command -v cc >/dev/null || missing+=(gcc libc6-dev)
  command -v curl >/dev/null || missing+=(curl ca-certificates)
  command -v kubectl >/dev/null || missing+=(kubernetes-client)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# A Rust toolchain new enough for the crate (edition 2024), with rustfmt and clippy.
ensure_rust() {
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  if ! command -v cargo >/dev/null; then
    echo "installing the Rust toolchain (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    . "$HOME/.cargo/env"
  fi
}

# A private Python with the official kubernetes client (the client-compatibility test) and
# kubernetes-validate (offline schema validation of manifests/, tests/manifests.rs).
ensure_python_client() {
  local venv="${CARGO_TARGET_DIR:-$PWD/target}/python"
  if ! "$venv/bin/python" -c "import kubernetes, kubernetes_validate" 2>/dev/null; then
    if ! command -v python3 >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    if ! python3 -m venv "$venv" 2>/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check kubernetes kubernetes-validate
  fi
  export RELAUNCH_PYTHON="$venv/bin/python"
}
