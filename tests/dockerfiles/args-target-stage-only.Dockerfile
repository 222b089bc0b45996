FROM alpine AS unused
ARG ONLY_HERE
RUN echo $ONLY_HERE

FROM alpine AS final
RUN echo final
