FROM python:3.12 AS wheels
ARG TARGETPLATFORM
ARG TARGETARCH
WORKDIR /wheels
COPY requirements.txt .
RUN echo "building wheels for $TARGETPLATFORM" && \
    pip wheel --wheel-dir=/wheels -r requirements.txt

FROM python:3.12-slim
COPY --from=wheels /wheels /wheels
RUN pip install --no-index --find-links=/wheels /wheels/*.whl && rm -rf /wheels
LABEL arch=${TARGETARCH}
CMD ["python3"]
