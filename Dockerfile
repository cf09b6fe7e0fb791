# syntax=docker/dockerfile:1
# The project image: the `pac` CLI with everything a pipeline step or a training pod runs.
#   scripts/build-image                      # builds pac-k8s:<package version> with docker or podman
#   scripts/build-image --cuda               # the CUDA build of torch (TORCH_INDEX_URL=.../whl/cu128)
# Every KFP component, the chart and the training jobs use this image at the package version's tag.

# Any Debian bookworm: the registry's image, or one made locally with debootstrap (scripts/build-image --base).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
# Where pip finds torch: the CPU wheel index by default; --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# for CUDA; empty to take torch from PIP_FIND_LINKS (a local wheel directory mounted into the build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS=${PIP_FIND_LINKS} PIP_CERT=${PIP_CERT}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
# torch first and pinned: a resolver run that reaches it through the project's dependencies would take the
# default index's (multi-GB CUDA) build.
RUN pip install ${TORCH_INDEX_URL:+--index-url ${TORCH_INDEX_URL}} "torch==2.13.0"
COPY pyproject.toml README.md scripts/image-constraints.txt /src/
COPY model /src/model
COPY components /src/components
COPY pipelines /src/pipelines
# [server]: the MLflow server's database drivers (helm: mlflow.backendStore.type=database)
# Every other version exactly as locked (scripts/lock-image), so a rebuild installs the image that was tested.
RUN pip install -c /src/image-constraints.txt "/src[server]" "torch==2.13.0" && pip check

FROM ${BASE_IMAGE}
ARG MUJOCO_GL=osmesa
# g++: DeepSpeed compiles its CPU communication op on first use (cached per pod); libosmesa6: headless MuJoCo
# rendering for evaluation videos without a GPU (MUJOCO_GL=egl uses the GPU's EGL driver instead).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev g++ libosmesa6 libgl1 libglib2.0-0 \
    ca-certificates ffmpeg \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 1000 pac && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/pac pac \
 && mkdir -p /workspace && chown pac:pac /workspace
ENV PATH=/opt/venv/bin:${PATH} \
    MUJOCO_GL=${MUJOCO_GL} PYOPENGL_PLATFORM=${MUJOCO_GL} \
    HOME=/home/pac TORCH_EXTENSIONS_DIR=/home/pac/.cache/torch_extensions \
    MPLCONFIGDIR=/tmp/matplotlib PYTHONUNBUFFERED=1
USER 1000:1000
WORKDIR /workspace
# Compile DeepSpeed's CPU communication op once into the image (first use would take a minute per process).
RUN DS_ACCELERATOR=cpu python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" > /dev/null \
 && pac --help > /dev/null
ENTRYPOINT ["pac"]
CMD ["--help"]
