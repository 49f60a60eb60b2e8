# tenantledger service image. The install steps are `make run`'s (Makefile, target $(STAMP)) without the test
# extras and editable mode; tests/scale/test_deploy_files.py checks that and runs them.
FROM python:3.11.11-slim-bookworm

# Non-root: the service needs no privilege (ports above 1024, writes only its own volume).
RUN useradd --system --create-home --uid 10001 tenantledger && mkdir -p /var/lib/tenantledger/lake \
    && chown -R tenantledger /var/lib/tenantledger
WORKDIR /app
COPY pyproject.toml README.md ./
COPY receiver receiver
COPY processors processors
COPY ledger ledger
COPY tenantledger tenantledger
RUN python -m venv /opt/venv
RUN /opt/venv/bin/pip install -q --upgrade pip
RUN /opt/venv/bin/pip install -q .
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER tenantledger
WORKDIR /var/lib/tenantledger
# OTLP gRPC, OTLP HTTP (+ query API, /healthz, /metrics).
EXPOSE 4317 4318
# Inside a container the listeners must bind all interfaces (the defaults are loopback only).
CMD ["tenantledger", "serve", "--ledger", "/var/lib/tenantledger/ledger.duckdb", \
     "--grpc-endpoint", "0.0.0.0:4317", "--http-endpoint", "0.0.0.0:4318"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:4318/healthz', timeout=2).status != 200)"]
