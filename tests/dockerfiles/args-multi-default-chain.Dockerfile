FROM alpine
# As in BuildKit, each default sees the ARGs before it on the same line: B=12, C="123 with space".
ARG A=1 B=${A}2 C="${B}3 with space"
ARG D
ENV RESULT="$A|$B|$C|${D:-no-d}"
