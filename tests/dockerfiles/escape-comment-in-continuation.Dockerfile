FROM debian:bookworm-slim
RUN apt-get update && \
# install the runtime bits
    apt-get install -y \
      curl \
      # used for health checks
      jq \

      ca-certificates && \
    rm -rf /var/lib/apt/lists/*
