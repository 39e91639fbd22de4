# The gridpatrol image used by docker-compose.yml: the API and every worker, without Ultralytics.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/gridpatrol
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY gridpatrol gridpatrol
COPY ingest ingest
COPY detectors detectors
COPY alarm_bridge alarm_bridge
COPY api api
# models/ and samples/ are package folders too (package-dir in pyproject.toml): the build needs
# the files the package carries from them, and only those - no weights, footage or other samples.
COPY models/manifest.yaml models/manifest.yaml
COPY samples/site.yaml samples/site.yaml
RUN pip install --no-cache-dir -c constraints.txt '.[postgres]'
# Installed, not editable: the package carries the manifest (models/manifest.yaml, copied above
# for the build); this names the models folder outright. The weights are mounted at
# $GRIDPATROL_SHARED/models, beside the manifest, not over it.
ENV GRIDPATROL_MODELS_DIR=/srv/gridpatrol/models
ENV GRIDPATROL_SHARED=/srv/gridpatrol/shared
# The state and evidence volumes start as copies of these folders, owner included: the
# workers and the API write there as this user, never as root.
RUN useradd --system --uid 10001 --no-create-home --home-dir /srv/gridpatrol gridpatrol \
    && mkdir -p /srv/gridpatrol/var/state /srv/gridpatrol/var/evidence /srv/gridpatrol/shared/models \
    && chown -R gridpatrol:gridpatrol /srv/gridpatrol/var
USER gridpatrol
