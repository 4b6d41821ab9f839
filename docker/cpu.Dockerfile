# syntax=docker/dockerfile:1
# CPU image: the toy world end to end (python -m trainer demo) and, if wanted, either service on a
# CPU. Everything is installed: services + trainer, torch from the PyTorch CPU index.
#   docker build -f docker/cpu.Dockerfile -t lasro/cpu .
#   docker run --rm lasro/cpu                                   # the demo, ~CPU minutes
#   docker run --rm -p 8100:8100 lasro/cpu python -m reward_service --host 0.0.0.0
ARG PYTHON_BASE=python:3.11.11-slim-bookworm

FROM ${PYTHON_BASE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
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
# The toy pipelines are committed under toyworld/models/; if a checkout lacks them, build them
# here (CPU, slow) so the image is complete either way.
RUN pip install ".[cpu,services,trainer]" \
 && if [ ! -f toyworld/models/lcm/model_index.json ]; then \
      echo "toyworld/models missing: building the toy world (slow)" \
      && python -m toyworld build \
      && pip install --no-deps --force-reinstall ".[cpu,services,trainer]"; \
    fi \
 && cd / && python -c "from toyworld.paths import LCM_DIR; assert (LCM_DIR / 'model_index.json').is_file(), LCM_DIR"

FROM ${PYTHON_BASE}
RUN useradd --create-home --uid 10001 --user-group lasro \
 && mkdir -p /cache/huggingface /data/runs \
 && chown -R lasro:lasro /cache /data
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    OMP_NUM_THREADS=2
WORKDIR /data
USER lasro
# Both service ports, for running a service from this image; the demo itself binds only localhost.
EXPOSE 8100 8200
# The default command is a batch job (the demo); a service started from this image can be probed
# with its /healthz (compose does so).
HEALTHCHECK NONE
CMD ["python", "-m", "trainer", "demo", "--out", "/data/runs/demo"]
