FROM alpine:3.19
ENV WINPATH=C:\\Windows\\System32\\
CMD echo hi
ENV A=trailing\\
RUN echo "the previous ENV ended at its escaped backslash" \
    && true
LABEL path="C:\\"
