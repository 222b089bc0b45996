# syntax=docker/dockerfile:1
FROM alpine:3.19
RUN <<EOT1 cat > /file1 && <<EOT2 cat > /file2
first file
EOT1
second file
EOT2
COPY <<one.txt <<two.txt /docs/
document one
one.txt
document two
two.txt
