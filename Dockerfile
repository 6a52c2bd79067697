# Dockerfile: kvserve on the CPU (Node 20, Debian 12). The CUDA variant is Dockerfile.cuda.
#   docker build -t kvserve .
#   docker run --rm -p 8181:8181 -v /path/to/models:/models:ro kvserve --model /models/NAME
# Arguments after the image name go to the launcher (`node --import tsx ts/launcher/main.ts`, as
# `npm run start` runs it); without --model it serves the built-in tiny model, generated at start.
# Secrets go in the environment (KVSERVE_CLUSTER_SECRET, KVSERVE_REDIS_URL, KVSERVE_API_KEY), not
# in the arguments.

# ---- build: the addon (CMake through cmake-js, the npm install script) ----
FROM node:20-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# What `npm ci` builds the addon from; ts/ is not needed to build it.
COPY package.json package-lock.json CMakeLists.txt binding.gyp ./
COPY scripts/ scripts/
COPY native/ native/
RUN npm ci --no-audit --no-fund \
 && test -f build/Release/kvserve.node

# ---- runtime: the built addon, production dependencies, the TypeScript sources (run by tsx) ----
FROM node:20-bookworm-slim AS runtime
# redis-server: a leader starts a private one when a mode needs it (--router kv, --prefill-workers);
# nodes that join a deployment (--role frontend|worker|prefill) use --redis-url instead.
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production \
    KVSERVE_CACHE=/var/cache/kvserve \
    HF_HOME=/var/cache/huggingface
COPY package.json package-lock.json ./
# --ignore-scripts: the package's install script would build the addon again, and this stage has
# no compiler; the addon comes from the build stage. (No production dependency needs its own.)
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force
COPY --from=build /app/build/Release/kvserve.node build/Release/kvserve.node
COPY ts/ ts/
COPY scripts/worker-ready.mjs scripts/worker-ready.mjs
RUN mkdir -p /models "$KVSERVE_CACHE" "$HF_HOME" \
 && chown node:node "$KVSERVE_CACHE" "$HF_HOME" \
 && node -e "require('/app/build/Release/kvserve.node')"
# Numeric, so a Kubernetes runAsNonRoot check can verify it (the image's user node).
USER 1000:1000
EXPOSE 8181
VOLUME ["/models"]
ENTRYPOINT ["node", "--import", "tsx", "ts/launcher/main.ts"]
