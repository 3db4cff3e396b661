# GPU worker: CUDA PyTorch plus the engine's dependencies.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY requirements.lock pyproject.toml README.md ./
# torch comes from the base image (CUDA build); the lock's CPU pin is skipped.
RUN grep -v '^torch==' requirements.lock > /tmp/requirements.txt && pip install -r /tmp/requirements.txt
COPY engine engine
COPY bot bot
COPY mmpp mmpp
RUN pip install --no-deps .
USER 1000
CMD ["mmpp", "worker"]
