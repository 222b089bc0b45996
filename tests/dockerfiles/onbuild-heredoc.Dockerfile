# syntax=docker/dockerfile:1
FROM alpine:3.19
ONBUILD RUN <<EOF
echo "triggered in the child build"
EOF
ONBUILD COPY <<-EOF /etc/child.conf
	mode=child
	EOF
CMD ["sh"]
