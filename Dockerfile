# ledger-api image. Node 24 runs the TypeScript sources directly (type stripping): there is no build step,
# so the image is just production dependencies plus the runtime sources.
#
#   docker build -t ledger-api .
#   docker run --rm -e DATABASE_DIRECT_URL=... ledger-api node scripts/migrate.ts
#   docker run --rm -p 3000:3000 -e DATABASE_URL=... -e REDIS_URL=... -e JWT_SECRET=... -e WORKER_ENABLED=false ledger-api
#   docker run --rm -e DATABASE_URL=... -e REDIS_URL=... -e JWT_SECRET=... ledger-api node worker.ts
#
# compose.yaml runs it next to PostgreSQL, PgBouncer and Redis; `npm run image:test` builds and runs it for real
# (scripts/engine.sh builds a stand-in base where no registry is reachable: --build-arg BASE=...).

# The official image by default; any Debian-based Node 24 image with a `node` user of uid 1000 will do.
ARG BASE=node:24-bookworm-slim

# ---- deps: production node_modules only --------------------------------------------------------------------
FROM ${BASE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY patches ./patches
# --omit=dev also leaves out the `node` devDependency (an npm-packaged Node for older machines); the image
# already has Node 24. --ignore-scripts: no production dependency needs an install script, and none may run;
# that skips the postinstall hook too, so the driver fixes in patches/ (see its README) are applied here.
# --prefer-offline: what the cache mount holds is used without asking the registry again (the lock file pins it).
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund && \
    npm exec --yes --prefer-offline --package=patch-package@8.0.1 -- patch-package --error-on-fail

# ---- runtime ----------------------------------------------------------------------------------------------------
FROM ${BASE} AS runtime
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000
WORKDIR /app

# Everything stays owned by root and is only readable by the `node` user that runs the process:
# the app never writes to its own directory (the root filesystem can be mounted read-only).
COPY --from=deps /app/node_modules ./node_modules
# The whole source tree, so that no module the server, the worker or the migration runner imports can be left
# out; .dockerignore keeps out what none of them loads (tests, benchmarks, deploy files, local state, secrets).
COPY . .

USER node
EXPOSE 3000

# Liveness only: readiness (PostgreSQL and Redis reachable) is the orchestrator's business (compose checks
# /health/ready), and a dependency outage must not get the container killed.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/health/live').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# server.ts and worker.ts handle SIGTERM themselves (close-with-grace): stop accepting or claiming, finish what is
# in flight, close pools, exit 0.
STOPSIGNAL SIGTERM
# The API. The job worker is the same image with `node worker.ts`; migrations run before a release as
# `node scripts/migrate.ts` (DATABASE_DIRECT_URL, else DATABASE_URL).
# The V8 flags keep a process warm through quiet periods (API_NODE_FLAGS in plugins/http/config.ts says why).
CMD ["node", "--no-memory-reducer", "--no-flush-bytecode", "server.ts"]
