#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and end-to-end tests against real peers.
# With MANIFOLD_REQUIRE_PEERS=1 (CI) a missing peer fails its test instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then scripts/install-deps.sh; fi
if [ "$(id -u)" = 0 ]; then
  # QEMU's handlers (flag F) for the emulated tests, registered by manifold itself.
  cargo build -q -p manifold-cli
  target/debug/manifold binfmt install all ||
    echo "warning: manifold binfmt install all failed; emulated tests will say why" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
