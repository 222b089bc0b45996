FROM mcr.microsoft.com/devcontainers/cpp:1-debian-12 AS build
ARG VCPKG_REF=2024.03.25
ENV VCPKG_ROOT=/opt/vcpkg VCPKG_DEFAULT_BINARY_CACHE=/cache/vcpkg
ADD --keep-git-dir=true https://github.com/microsoft/vcpkg.git#${VCPKG_REF} ${VCPKG_ROOT}
RUN ${VCPKG_ROOT}/bootstrap-vcpkg.sh -disableMetrics
WORKDIR /src
COPY vcpkg.json .
RUN --mount=type=cache,target=/cache/vcpkg ${VCPKG_ROOT}/vcpkg install
COPY . .
RUN cmake --preset release && cmake --build --preset release

FROM debian:12-slim
COPY --from=build /src/build/release/app /usr/local/bin/app
ENTRYPOINT ["app"]
