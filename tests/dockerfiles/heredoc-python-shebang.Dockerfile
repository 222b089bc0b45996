# syntax=docker/dockerfile:1
FROM python:3.12-slim
RUN <<EOF
#!/usr/bin/env python3
# comment lines inside here-documents are content, not Dockerfile comments
print("hello from a heredoc")
EOF
RUN <<EOF bash
# a bash script
for i in 1 2 3; do echo $i; done
EOF
