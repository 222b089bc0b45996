FROM alpine AS tools
RUN echo first > /which

FROM alpine AS tools
RUN echo second > /which

FROM tools AS child
RUN cat /which

FROM alpine
# Duplicate stage names are legal in BuildKit (only a lint): the last "tools" wins.
COPY --from=tools /which /which
COPY --from=child /which /child-which
