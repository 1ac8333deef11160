# The serving image: Ray's official image line, this package, and the official weights plus
# exported artifacts baked in, so a running container never needs the network.
#
#   docker build --build-context calibration=../shared/images -t REGISTRY/serve-app:0.1.0-cpu .
#   docker build --build-context calibration=../shared/images \
#       --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu -t REGISTRY/serve-app:0.1.0-gpu .
#
# `calibration` is a folder of real photos (32 are used) for the INT8 quantization ranges.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${RAY_IMAGE}

ENV SERVE_APP_HOME=/opt/serve_app
ENV TORCH_HOME=${SERVE_APP_HOME}/torch \
    SERVE_APP_CACHE=${SERVE_APP_HOME}/cache \
    SERVE_APP_ARTIFACTS=${SERVE_APP_HOME}/artifacts \
    SERVE_APP_CALIBRATION_IMAGES=${SERVE_APP_HOME}/calibration \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
    RAY_SERVE_ENABLE_HA_PROXY=1

WORKDIR ${SERVE_APP_HOME}/src
COPY pyproject.toml README.md ./
COPY serve_app ./serve_app
COPY configs ./configs
RUN pip install --no-cache-dir . && python -c "import serve_app.app"

COPY --from=calibration . ${SERVE_APP_CALIBRATION_IMAGES}/
# The only step that needs the network: fetch the official weights into TORCH_HOME and check
# their sha256, then export TorchScript, ONNX and INT8 ONNX with a manifest.
RUN python -m serve_app check-weights \
 && python -m serve_app export --out ${SERVE_APP_ARTIFACTS}

WORKDIR ${SERVE_APP_HOME}
EXPOSE 8000
