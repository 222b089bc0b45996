FROM alpine
ARG MODE=arg-value
ENV MODE=env-value
ARG MODE=ignored-by-expansion
RUN echo $MODE
WORKDIR /srv/${MODE}
ENV LATER=${MODE}
