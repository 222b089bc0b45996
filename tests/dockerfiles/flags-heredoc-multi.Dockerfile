# syntax=docker/dockerfile:1.7
FROM debian:bookworm-slim AS base
ARG GREETING=hello
RUN <<EOT bash
set -euo pipefail
apt-get update
apt-get install -y --no-install-recommends ca-certificates python3
rm -rf /var/lib/apt/lists/*
EOT
RUN python3 - <<'PY' && cat <<-EOF > /etc/motd
print("quoted: $GREETING stays")
PY
	${GREETING} from a tab-stripped here-document
	EOF
COPY <<EOF /etc/app.conf
greeting=${GREETING}
path=\$PATH
EOF
COPY --chmod=0755 <<'EOF' /usr/local/bin/entry
#!/bin/sh
exec "$@"
EOF
ENTRYPOINT ["/usr/local/bin/entry"]
CMD ["sh"]
