# CROP serving for CUDA machines: one image for both roles of the compose stack,
#   the engine   `vllm serve /models/<model> --hf-overrides ... --trust-request-mm-kwargs`
#   the gateway  `crop-server serve --engine remote --backend http://engine:8000 ...` (default)
# Based on the official vLLM image, so CUDA, torch and vLLM are the versions vLLM ships and
# tests together; the plugin loads through the `vllm.general_plugins` entry point.
# No weights are baked in: mount them at /models (see deploy/docker-compose.yml).
FROM vllm/vllm-openai:v0.32.0

# The base image's Python runs vLLM; keep its torch and vllm exactly as shipped while adding
# the project's few extra dependencies (Ultralytics for the localizer).
WORKDIR /opt/crop-serving
COPY pyproject.toml README.md ./
COPY crop_vllm ./crop_vllm
COPY crop_localizer ./crop_localizer
COPY server ./server
RUN python3 -m pip freeze | grep -iE '^(torch|torchvision|vllm)==' > /tmp/keep.txt \
    && python3 -m pip install --no-cache-dir -c /tmp/keep.txt . \
    && rm /tmp/keep.txt \
    && python3 -c "import crop_vllm, crop_localizer, server.cli"

# An unprivileged user; caches it must write live under its home (or a mounted volume).
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin crop \
    && mkdir -p /models /home/crop/.cache \
    && chown crop:crop /home/crop/.cache
USER crop
ENV HOME=/home/crop \
    HF_HOME=/home/crop/.cache/huggingface \
    YOLO_CONFIG_DIR=/home/crop/.cache/ultralytics \
    CROP_CACHE_DIR=/home/crop/.cache/crop-serving \
    CROP_PORT=8000 \
    PYTHONUNBUFFERED=1
VOLUME ["/models", "/home/crop/.cache"]
EXPOSE 8000

# Both roles answer GET /health on $CROP_PORT (200 once the model is loaded and serving).
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('CROP_PORT', '8000'), timeout=4)"

# The base image's entrypoint is `vllm serve`; reset it so either role is a plain command.
ENTRYPOINT []
CMD ["crop-server", "serve", "--host", "0.0.0.0", "--port", "8000", "--model", "/models/model"]
