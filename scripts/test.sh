#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs every
# test of the workspace (unit, simulator, CLI, loop-device and namespace tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PATH:/usr/sbin:/sbin"
# The namespace lab itself first: every end-to-end test stands on it.
bash lab/selftest.sh
cargo test --workspace --locked "$@"
