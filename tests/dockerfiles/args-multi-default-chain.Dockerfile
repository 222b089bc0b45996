FROM alpine
# As in BuildKit, defaults expand with the values from before this instruction: B=2, C="3 with space".
ARG A=1 B=${A}2 C="${B}3 with space"
ARG D
ENV RESULT="$A|$B|$C|${D:-no-d}"
