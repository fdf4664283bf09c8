# The tool in a container, for AWS Batch array jobs and Kubernetes indexed Jobs (deploy/).
# Build: docker build -t s3-bulk-transfer .   Run: docker run --rm s3-bulk-transfer --help
# The container keeps no state of its own: give it a volume at /state that outlives it (EFS), where
# each shard's progress file, its log and the shards' plan live, so a retried child resumes.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt /app/requirements.txt
RUN python -m pip install -r /app/requirements.txt
COPY s3_bulk_transfer.py deploy/entrypoint.sh /app/
RUN chmod 0755 /app/entrypoint.sh /app/s3_bulk_transfer.py \
    && useradd --uid 10001 --no-create-home --home-dir /state transfer \
    && mkdir -p /state && chown transfer /state

# Not root: the tool needs no privilege, and files it writes on a shared volume belong to one uid.
USER 10001
WORKDIR /state
ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["--help"]
