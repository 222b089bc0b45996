FROM alpine
ENV A=${B!x}
