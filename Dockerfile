# tether's image for people with Docker (or podman/buildah) who can pull base images:
#
#   docker build -t tether:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# CI does not build or test this file. CI builds and tests the image with `npm run image`
# (.ci/image/build). That build uses only Debian's packages and the npm registry and pulls no
# base image. Both builds give the same layout: Node at /nodejs/bin/node, tether in /app,
# `tether` on the PATH, user 65532, and an entry point that runs the TypeScript CLI with
# Node 24's type stripping.

ARG BUILD_IMAGE=docker.io/library/node:24-bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/nodejs24-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies from the lockfile, with no install scripts. Node never loads the
# TypeScript sources, declarations or source maps inside node_modules, so they are deleted.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && find node_modules -type f \( -name '*.ts' -o -name '*.mts' -o -name '*.cts' -o -name '*.map' \) -delete
COPY src ./src
COPY layers ./layers

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="tether" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /app /app
# `tether` on the PATH for `command: ["tether", ...]` (the Helm chart). It is a #!/nodejs/bin/node
# script, because the image has no shell.
COPY .ci/image/tether /usr/local/bin/tether
ENV PATH=/usr/local/bin:/nodejs/bin:/usr/bin:/bin
WORKDIR /app
USER 65532:65532
ENTRYPOINT ["/nodejs/bin/node", "/app/src/cli/bin.ts"]
