#!/usr/bin/env bash
# Idempotent install into ./.venv (CPU torch by default). Usage: bash scripts/install.sh
#   PHONELM_TORCH   pip spec for torch (default torch==2.13.0, the local CPU wheel). On a CUDA
#                   machine, install torch+torchaudio from PyTorch's CUDA index into .venv first,
#                   then run `pip install -e '.[test]'` instead (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
stamp=.venv/.phonelm-installed
want=$(cat pyproject.toml scripts/install.sh scripts/offline_requirements.py | sha1sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "install: .venv is up to date"
  exit 0
fi
echo "install: installing into .venv (first run takes ~2 min)"
"${pip[@]}" "${PHONELM_TORCH:-torch==2.13.0}"
# shellcheck disable=SC2046
"${pip[@]}" $(.venv/bin/python scripts/offline_requirements.py deps)
# encodec needs torchaudio only for an import we never use, and whisper's triton is CUDA-only:
# both go in last, without their dependencies (so no resolver run sees the two missing on
# purpose and prints a conflict); phonelm/codecs/encodec.py handles a missing torchaudio.
# shellcheck disable=SC2046
"${pip[@]}" --no-deps $(.venv/bin/python scripts/offline_requirements.py no-deps)
"${pip[@]}" --no-deps -e .
echo "$want" >"$stamp"
echo "install: done"
