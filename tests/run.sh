#!/usr/bin/env bash
# The project's test command: builds both test environments, then runs the suite in each.
#   a1111    A1111 1.10's pins (transformers 4.30.2, safetensors 0.4.2, Pillow 9.5, numpy 1.26)
#   current  today's diffusers + transformers + peft (our files must load there)
set -euo pipefail
cd "$(dirname "$0")/.."
# pipefail: a failed build stops here (grep's own status is ignored: it finds nothing to print when all is well).
if ! bash tests/setup_envs.sh 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; then
  echo "Building the test environments failed (see above); fix that first: nothing was tested." >&2
  exit 1
fi
status=0
for env in a1111 current; do
  echo "=== tests in .venv-tests/$env ==="
  ".venv-tests/$env/bin/python" -m pytest tests -q -p no:cacheprovider "$@" || status=$?
done
exit $status
