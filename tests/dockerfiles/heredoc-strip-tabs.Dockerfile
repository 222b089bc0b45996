# syntax=docker/dockerfile:1
FROM debian:bookworm-slim
COPY <<-EOF /etc/motd
	Welcome
		indented twice
	EOF
RUN <<-EOF
	set -e
	echo done
	EOF
