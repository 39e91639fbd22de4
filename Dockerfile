# The gridpatrol image used by docker-compose.yml: the API and every worker, without Ultralytics.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/gridpatrol
COPY pyproject.toml README.md constraints.txt ./
COPY gridpatrol gridpatrol
COPY ingest ingest
COPY detectors detectors
COPY alarm_bridge alarm_bridge
COPY api api
COPY models/manifest.yaml models/manifest.yaml
RUN pip install --no-cache-dir -c constraints.txt '.[postgres]'
# Installed, not editable: the package cannot find models/ beside itself, so name it.
ENV GRIDPATROL_MODELS_DIR=/srv/gridpatrol/models
USER nobody
