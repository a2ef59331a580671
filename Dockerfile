# Code-location image (MLOPS_CODE_IMAGE): the Dagster code server (`dagster api grpc`), each run's pod
# (K8sRunLauncher) and each deploy step's pod (k8s_job_executor). Dagster starts every one of them
# with its own command or args, so this image has no ENTRYPOINT and no CMD to fight them.
# Dagster+ builds it from dagster_cloud.yaml (build.directory "."); by hand, from the repository root:
#   docker build -t mlops-code:dev .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=1 \
    MLOPS_PROFILE=k8s \
    MLOPS_HOME=/var/lib/mlops \
    DAGSTER_HOME=/opt/dagster/dagster_home

# git: DVC's data workspace and the GitOps deploy mode commit with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir uv==0.9.*

WORKDIR /app
# Dependencies first, from the lock, so code changes reuse this layer.
COPY pyproject.toml uv.lock README.md ./
RUN uv export --frozen --no-dev --no-emit-project -o /tmp/requirements.txt \
    && uv pip install --system --no-cache -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# What the definitions read: the package, the Feast repo and its k8s config, the KServe manifests
# the deploy step renders. (tests/deploy derives this list from the code.)
COPY mlops_assets ./mlops_assets
COPY feature_repo ./feature_repo
COPY deploy/feast ./deploy/feast
COPY deploy/kserve ./deploy/kserve
RUN uv pip install --system --no-cache --no-deps . \
    && python -m compileall -q mlops_assets \
    && useradd --uid 1000 --create-home mlops \
    && mkdir -p /var/lib/mlops /opt/dagster/dagster_home && chown mlops /var/lib/mlops /opt/dagster/dagster_home

USER 1000
