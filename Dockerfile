# HKD Studio: the app on http://0.0.0.0:8501 inside the container.
#   docker build -t hkd-studio .
#   docker run -p 8501:8501 -v hkd-runs:/opt/hkd/runs -v hkd-data:/opt/hkd/data hkd-studio
# The volumes keep the background jobs (runs/jobs), their run folders, the evaluation cache
# (runs/cache) and the generated SynthPed splits (data/synthped) across container restarts.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends opencv-doc \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/hkd
COPY requirements.txt constraints.txt pyproject.toml README.md ./
# CPU builds of the pinned torch/torchvision (the default index serves CUDA builds)
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
      torch==2.14.1 torchvision==0.29.1 \
 && grep -v -E '^(nvidia-|cuda-|triton==)' constraints.txt > /tmp/constraints-cpu.txt \
 && pip install --no-cache-dir -r requirements.txt -c /tmp/constraints-cpu.txt
COPY hkd ./hkd
COPY app ./app
COPY assets ./assets
# the same server settings as scripts/app.sh (upload limits, theme)
COPY .streamlit ./.streamlit
RUN pip install --no-cache-dir --no-deps -e .

VOLUME ["/opt/hkd/runs", "/opt/hkd/data"]
EXPOSE 8501
# Inside a container the app must listen on all interfaces to be reachable.
CMD ["python", "-m", "app.serve", "--server.address", "0.0.0.0", "--server.port", "8501", \
     "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false", "--server.headless", "true"]
