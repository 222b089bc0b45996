ARG X=1
RUN echo $X
FROM alpine
