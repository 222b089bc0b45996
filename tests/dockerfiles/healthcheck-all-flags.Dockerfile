FROM nginx:1.27-alpine
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --start-interval=1s --retries=3 \
    CMD wget -qO- http://127.0.0.1/ || exit 1
STOPSIGNAL SIGQUIT
