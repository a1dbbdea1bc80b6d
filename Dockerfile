# edgecnn on NVIDIA GPUs: TensorFlow (CUDA 12 wheels via tensorflow[and-cuda]) for training,
# onnxruntime-gpu (CUDA 13 + cuDNN 9 from this base image) for the ONNX CUDA/TensorRT rows,
# pillow-heif for HEIC photos.
# Build:  docker build -t edgecnn .
# Run:    docker run --gpus all --rm -v "$PWD/runs:/work/runs" edgecnn run --data cifar10
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=3 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu's python3 packages follow the base image; pinning their exact versions breaks rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgecnn ./edgecnn
# The project's own dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install "pip==25.3" \
    && pip install ".[gpu,heic]"

RUN useradd --create-home --uid 1000 edge \
    && mkdir -p /work/runs \
    && chown -R edge:edge /work
USER 1000:1000
WORKDIR /work
VOLUME ["/work/runs"]

ENTRYPOINT ["edgecnn"]
CMD ["--help"]
