# tether's image for people with Docker (or podman/buildah) who can pull base images:
#
#   docker build -t tether:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# CI does not build or test this file. CI builds and tests the image with `npm run image`
# (.ci/image/build). That build uses only Debian's packages and the npm registry and pulls no
# base image. Both builds give the same layout: Node at /nodejs/bin/node, tether in /app,
# `tether` on the PATH, user 65532, and an entry point that runs the production build
# (`npm run build`: dist/tether.mjs and its chunks, which import only Node's built-in modules).

ARG BUILD_IMAGE=docker.io/library/node:24-bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/nodejs24-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# All dependencies from the lockfile (the bundler is a devDependency), with no install scripts.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY src ./src
COPY layers ./layers
COPY .ci/build.ts ./.ci/build.ts
RUN node .ci/build.ts --out /out/app/dist --clean --cache-uid 65532 && find /out/app/dist -name '*.map' -delete \
 && cp package.json /out/app/

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="tether" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/app /app
# `tether` on the PATH for `command: ["tether", ...]` (the Helm chart). It is a #!/nodejs/bin/node
# script, because the image has no shell.
COPY .ci/image/tether /usr/local/bin/tether
ENV PATH=/usr/local/bin:/nodejs/bin:/usr/bin:/bin
# The chart's runtimeEnv (charts/tether/values.yaml), as .ci/image/build sets it.
ENV NODE_OPTIONS=--max-semi-space-size=16 MALLOC_ARENA_MAX=2
WORKDIR /app
USER 65532:65532
ENTRYPOINT ["/nodejs/bin/node", "/app/dist/tether.mjs"]
