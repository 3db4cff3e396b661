# GPU worker: the CUDA build of the torch release the tests run on, then the runtime lock.
# requirements.lock and the Makefile pin torch 2.13.0 (tests/test_images.py keeps all three equal).
# cu130 is CUDA 13.0, the build PyPI's own Linux wheel of torch 2.13.0 is (cuda-toolkit 13.0.3,
# cuDNN 9.20); it needs an NVIDIA driver of the 580 series or newer on the host.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# torch.compile (MMPP_COMPILE=true) has Triton build its CUDA launcher with a C compiler at run time.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY requirements.lock ./
# torch from PyTorch's CUDA index (its CUDA libraries come from PyPI); the lock's torch==2.13.0 is
# then met by the installed 2.13.0+cu130, and every other package is set to the lock's pin.
RUN pip install --index-url https://download.pytorch.org/whl/cu130 --extra-index-url https://pypi.org/simple \
        torch==2.13.0+cu130 \
    && pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY engine engine
COPY bot bot
COPY mmpp mmpp
# /models is compose's model-cache volume: owned by the worker's user so the first start can fill it.
RUN pip install --no-deps . && useradd --uid 1000 mmpp && mkdir -p /models && chown mmpp /models
USER mmpp
CMD ["mmpp", "worker"]
