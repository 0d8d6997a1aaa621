# Sourced by the scripts here: stop on errors, work from the repository root, find cargo even
# when rustup's directory is not on PATH yet, and install what is missing (scripts/deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
scripts/deps.sh
