#!/usr/bin/env bash
# The GPU rows of issue 18 in one command (see benchmarks/gpu_check.py --help); a hard bound of
# 9 minutes on top of the script's own --budget (8 minutes by default).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec timeout --signal=TERM --kill-after=20 540 "${PYTHON:-python}" "$here/gpu_check.py" "$@"
