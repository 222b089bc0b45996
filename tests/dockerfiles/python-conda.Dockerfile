FROM continuumio/miniconda3:24.1.2-0 AS build
COPY environment.yml .
RUN conda env create -f environment.yml && \
    conda install -c conda-forge conda-pack && \
    conda-pack -n app -o /tmp/env.tar && \
    mkdir /venv && cd /venv && tar xf /tmp/env.tar && rm /tmp/env.tar && \
    /venv/bin/conda-unpack

FROM debian:bookworm-slim AS runtime
COPY --from=build /venv /venv
SHELL ["/bin/bash", "-c"]
ENTRYPOINT source /venv/bin/activate && python -m app
