# syntax=docker/dockerfile:1
# Trainer (python -m trainer {train,pretrain,evaluate,sample,demo}), GPU image. A batch job, not a
# server: no port, no HTTP healthcheck. Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t lasro/trainer .
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
RUN pip install ".[services,trainer]" \
 && cd / && python -c "import trainer.loop, accelerate, peft, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

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
    TRAINER_DEVICE=cuda \
    TRAINER_OUT=/data/runs/train \
    TRAINER_PROGRESS=false
WORKDIR /data
USER lasro
# No server, so no HTTP healthcheck; compose waits on the services it calls instead.
HEALTHCHECK NONE
# Tokens are never baked in: pass TRAINER_REWARD_TOKEN / TRAINER_SURROGATE_TOKEN at run time.
# Services are reached through TRAINER_REWARD_URL, TRAINER_SURROGATE_URL and TRAINER_REDIS_URL.
ENTRYPOINT ["python", "-m", "trainer"]
CMD ["train"]
