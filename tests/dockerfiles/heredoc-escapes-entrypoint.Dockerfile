# syntax=docker/dockerfile:1
FROM alpine:3.19
ARG PORT=8080
# In COPY here-documents BuildKit expands $VARS, keeps quotes, and turns \\ into \ and \$ into $.
COPY --chmod=755 <<EOF /entrypoint.sh
#!/bin/sh
exec /usr/bin/server \\
  --listen=0.0.0.0:${PORT} \\
  --debug-port=\${DEBUG_PORT:-5000} \\
  -- "\$@"
EOF
ENTRYPOINT ["/entrypoint.sh"]
