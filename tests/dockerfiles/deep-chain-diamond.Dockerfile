FROM alpine AS a
RUN echo a > /a

FROM a AS b
RUN echo b > /b

FROM a AS c
RUN echo c > /c

FROM alpine AS d
COPY --from=b /b /b
COPY --from=c /c /c
COPY --from=a /a /a
