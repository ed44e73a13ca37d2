#!/usr/bin/env bash
# Builds the two test environments (idempotent):
#   .venv-tests/a1111    A1111 1.10's pins: the engine and WebUI-side code run here
#   .venv-tests/current  current diffusers + peft: our LoRA files must load there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
make_env() {
  local name=$1 reqs=$2 stamp=.venv-tests/$1/.installed
  if [[ -f $stamp ]] && cmp -s "$reqs" "$stamp"; then return; fi
  echo "Building .venv-tests/$name from $reqs (first run: a few minutes) ..."
  $PY -m venv ".venv-tests/$name"
  ".venv-tests/$name/bin/pip" install -q -r "$reqs"
  cp "$reqs" "$stamp"
}
for env in a1111 current; do
  make_env $env tests/requirements-$env.txt
  # open_clip ships CLIP's BPE vocabulary; the tests build an offline tokenizer from it.
  # --no-deps: its torchvision dependency would replace the CPU torch.
  if ! .venv-tests/$env/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('open_clip') is None)"; then
    .venv-tests/$env/bin/pip install -q --no-deps open-clip-torch==2.20.0
  fi
done
# A1111's model classes: the `ldm` package of stable-diffusion-sdkit is the commit A1111 pins,
# near enough; --no-deps keeps A1111's pins above (its own deps would upgrade them).
if ! .venv-tests/a1111/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('ldm') is None)"; then
  .venv-tests/a1111/bin/pip install -q --no-deps stable-diffusion-sdkit==2.1.5
fi
