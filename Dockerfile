FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY failover ./failover
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --no-create-home failover
COPY config/failover.yaml /etc/failover/failover.yaml
COPY config/maintenance.html /etc/failover/maintenance.html
USER failover
WORKDIR /tmp

EXPOSE 8080
# slim has no curl: the health check uses Python's standard library.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/_failover/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["failover"]
CMD ["run", "--config", "/etc/failover/failover.yaml"]
