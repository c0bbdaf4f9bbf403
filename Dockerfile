# Frontier Gateway container image.
#
#   docker build -t frontier-gateway .
#   docker run --rm -p 8080:8080 --read-only --tmpfs /tmp -v fgw-data:/var/lib/gateway frontier-gateway
#
# The admin listener (health, metrics, admin API) is on the container's loopback by default:
# the HEALTHCHECK reaches it, nothing else does. Exposing it takes GATEWAY_ADMIN_LISTEN=0.0.0.0:9090
# and admin tokens (GATEWAY_ADMIN__TOKENS): /metrics then asks for one, and the gateway refuses
# to start without (docs/operators.md, "Metrics and the admin listener").
#
# Two stages: the first builds the virtual environment and extracts the embedded country
# database; the second is python:3.11-slim with that environment and nothing else (no
# compiler, no pip cache, no build tools). It runs as uid 10001, and only /var/lib/gateway
# (state, audit spool, audit log) and /tmp need to be writable, so the root filesystem can be
# mounted read-only.
#
# Mount points:
#   /etc/gateway/gateway.yaml   the config (a default is baked in: deploy/docker/gateway.yaml)
#   /etc/gateway/policies/      the policy bundle (the shipped examples are baked in)
#   /etc/gateway/geoip/         a GeoIP2/GeoLite2 database (set geoip.country_db to its path)
#   /var/lib/gateway/           writable: state/, audit/

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# A regular (not editable) install; pip compiles the bytecode here, so the read-only
# runtime never needs to write __pycache__.
RUN /opt/gateway/bin/pip install . && /opt/gateway/bin/gateway --help >/dev/null
# The embedded DB-IP database ships xz-compressed; the reader needs a plain file. Extract it
# now into the cache directory the runtime will look in (gateway/geo/embedded.py: XDG_CACHE_HOME),
# so a read-only container finds it intact and writes nothing.
ENV XDG_CACHE_HOME=/opt/gateway-cache
RUN /opt/gateway/bin/python -c "from gateway.geo.embedded import default_country_db; print(default_country_db())"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="Frontier Gateway" \
      org.opencontainers.image.description="Export-control access gateway for frontier AI model endpoints" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/opt/gateway-cache \
    FGW_HEALTHCHECK_URL=http://127.0.0.1:9090/healthz
# Not GATEWAY_*: every GATEWAY_* variable is a config key (and an unknown one is an error).
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/gateway --no-create-home \
            --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/gateway/geoip /var/lib/gateway/state /var/lib/gateway/audit /var/lib/gateway/demo \
 && chown -R 10001:10001 /var/lib/gateway \
 && chmod 0750 /var/lib/gateway /var/lib/gateway/state /var/lib/gateway/audit
COPY --from=build /opt/gateway /opt/gateway
COPY --from=build /opt/gateway-cache /opt/gateway-cache
COPY policies /etc/gateway/policies
COPY deploy/docker/gateway.yaml /etc/gateway/gateway.yaml
USER 10001:10001
WORKDIR /var/lib/gateway
EXPOSE 8080 9090
# Liveness of the admin listener, with the Python that is already there (no curl in the image).
# Readiness (policy, country database, audit, Redis) is /readyz: the orchestrator's business.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['FGW_HEALTHCHECK_URL'], timeout=2).status == 200 else 1)"]
# The gateway is PID 1 and handles SIGTERM itself: it stops accepting, finishes what is in
# flight and writes its audit records.
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]
