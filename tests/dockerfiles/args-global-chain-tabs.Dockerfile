# syntax=docker/dockerfile:1
ARG APP_USER=builder \
	APP_UID=${APP_UID:-10001} \
	APP_GID=${APP_GID:-${APP_UID}}

FROM debian:bookworm-slim AS base
ARG APP_USER \
	APP_UID \
	APP_GID
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
	\
	apt-get update && \
	apt-get install -y --no-install-recommends \
	ca-certificates \
	curl
RUN groupadd --gid "${APP_GID}" "${APP_USER}" && \
	useradd --uid "${APP_UID}" --gid "${APP_GID}" -m "${APP_USER}"
USER ${APP_USER}
RUN --mount=type=cache,target=/home/builder/.cache,uid=${APP_UID},gid=${APP_GID} \
	ls ~/.cache
RUN <<EOF
cat <<-'PROFILE' >> ~/.bashrc
	export PATH="$HOME/.local/bin:$PATH"
PROFILE
EOF

FROM base AS final
CMD ["bash"]
