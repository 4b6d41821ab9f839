# syntax=docker/dockerfile:1
# ImageReward as a reward service of its own: the normal `python -m reward_service`, loading only
# `image_reward`, in an image holding ImageReward's pinned 2023 stack
# (docker/imagereward/requirements.txt: old transformers, timm 0.6.13, fairscale, clip). The main
# reward service reaches it with --remote image_reward=http://reward-imagereward:8101/score, so the
# two dependency sets never meet in one environment. Build from the repository root:
#   docker build -f docker/imagereward.Dockerfile -t lasro/reward-imagereward .
#
# How the project goes in without disturbing the pinned stack:
#   1. install docker/imagereward/requirements.txt as that file says (it brings its own torch 2.0.1,
#      a CUDA 11.7 build from PyPI; OpenAI clip's setup.py needs setuptools<70, no build isolation);
#   2. freeze the result (name==version lines) into a constraints file;
#   3. install this project with --no-deps (its [services] extra wants a newer transformers and
#      diffusers, which the reward service does not import), then only the web-serving deps under
#      those constraints: pip fails the build rather than move a pinned package;
#   4. pip check (ignoring only lasro's own metadata ranges) and an import smoke test.
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_BASE} AS builder
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip
WORKDIR /src
COPY docker/imagereward/requirements.txt docker/imagereward/requirements.txt
RUN pip install "setuptools<70" wheel \
 && pip install --no-build-isolation -r docker/imagereward/requirements.txt \
 && pip freeze --exclude-editable | grep '==' > /tmp/pinned.txt
COPY pyproject.toml README.md ./
COPY lasro_common/ lasro_common/
COPY reward_service/ reward_service/
COPY surrogate_service/ surrogate_service/
COPY trainer/ trainer/
COPY toyworld/ toyworld/
RUN pip install --no-deps . \
 && pip install -c /tmp/pinned.txt \
      "fastapi>=0.110" "uvicorn[standard]>=0.29" "pydantic>=2.6" "pydantic-settings>=2.2" \
      "prometheus-client>=0.20" "httpx>=0.27" "safetensors>=0.4" numpy pillow \
 && { pip check > /tmp/check.txt || true; } \
 && cat /tmp/check.txt \
 && if grep -v '^lasro ' /tmp/check.txt | grep -qv '^No broken requirements'; then exit 1; fi \
 && cd / && python -c "import ImageReward, reward_service.app; from reward_service.rewards import registry; assert 'image_reward' in registry.available()"

FROM ${CUDA_BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --user-group lasro \
 && mkdir -p /cache/huggingface /cache/imagereward /data \
 && chown -R lasro:lasro /cache /data
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    REWARD_HOST=0.0.0.0 \
    REWARD_PORT=8101 \
    REWARD_DEVICE=cuda \
    REWARD_REWARD_OPTIONS='{"image_reward": {"download_root": "/cache/imagereward"}}'
WORKDIR /data
USER lasro
EXPOSE 8101
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8101/healthz', timeout=4)"]
# Tokens are never baked in: pass REWARD_API_TOKEN at run time (and the same value as
# REWARD_REMOTE_TOKEN to the main reward service).
ENTRYPOINT ["python", "-m", "reward_service"]
CMD ["--reward", "image_reward"]
