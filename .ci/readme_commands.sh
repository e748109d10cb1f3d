#!/usr/bin/env bash
# Print README's set-up commands, one per line: the command lines (not comments) of the first ```bash block
# under "## Set up". .ci/run executes exactly these, so README and CI cannot drift apart.
set -euo pipefail
awk '
  /^## / { in_setup = ($0 == "## Set up") }
  in_setup && /^```bash/ { in_block = 1; next }
  in_block && /^```/ { exit }
  in_block && NF && $1 !~ /^#/ { print }
' "${1:-README.md}"
