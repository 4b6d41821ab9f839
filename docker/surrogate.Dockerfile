# syntax=docker/dockerfile:1
# Surrogate service (python -m surrogate_service), GPU image: R_psi (UNet encoder + heads) behind
# /grad, /score and /status, plus the online learner (Redis stream -> Bradley-Terry -> versions).
# Build from the repository root:
#   docker build -f docker/surrogate.Dockerfile -t lasro/surrogate .
# Run one learner (the default) and, if wanted, serve-only replicas with --no-learn.
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_BASE} AS builder
# A CUDA build of torch goes in first; override both to match your driver
# (e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lasro_common/ lasro_common/
COPY reward_service/ reward_service/
COPY surrogate_service/ surrogate_service/
COPY trainer/ trainer/
COPY toyworld/ toyworld/
RUN pip install ".[services]" \
 && cd / && python -c "import surrogate_service.app, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

FROM ${CUDA_BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --user-group lasro \
 && mkdir -p /cache/huggingface /data \
 && chown -R lasro:lasro /cache /data
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    SURROGATE_HOST=0.0.0.0 \
    SURROGATE_PORT=8200 \
    SURROGATE_DEVICE=cuda \
    SURROGATE_CHECKPOINT_DIR=/data/surrogate
WORKDIR /data
USER lasro
EXPOSE 8200
# Liveness only: /readyz (models loaded) is what docker-compose.yml waits on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8200/healthz', timeout=4)"]
# Tokens are never baked in: pass SURROGATE_API_TOKEN at run time. The base model comes from
# SURROGATE_BASE_MODEL (or --base-model); without SURROGATE_REDIS_URL a private redis-server starts.
ENTRYPOINT ["python", "-m", "surrogate_service"]
