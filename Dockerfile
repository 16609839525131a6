# syntax=docker/dockerfile:1
# ledger-api image. Node 24 runs the TypeScript sources directly (type stripping): there is no build step,
# so the image is just production dependencies plus the runtime sources.
#
#   docker build -t ledger-api .
#   docker run --rm -e DATABASE_DIRECT_URL=... ledger-api node scripts/migrate.ts
#   docker run --rm -p 3000:3000 -e DATABASE_URL=... -e REDIS_URL=... -e JWT_SECRET=... ledger-api
#
# compose.yaml runs it next to PostgreSQL, PgBouncer and Redis.

# ---- deps: production node_modules only --------------------------------------------------------------------
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY patches ./patches
# --omit=dev also leaves out the `node` devDependency (an npm-packaged Node for older machines); the image
# already has Node 24. --ignore-scripts: no production dependency needs an install script, and none may run;
# that skips the postinstall hook too, so the driver fixes in patches/ (see its README) are applied here.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --ignore-scripts --no-audit --no-fund && \
    npm exec --yes --package=patch-package@8.0.1 -- patch-package --error-on-fail

# ---- runtime ----------------------------------------------------------------------------------------------------
FROM node:24-bookworm-slim AS runtime
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000
WORKDIR /app

# Everything stays owned by root and is only readable by the `node` user that runs the process:
# the app never writes to its own directory.
COPY --from=deps /app/node_modules ./node_modules
COPY package.json app.ts server.ts cluster.ts ops-server.ts config.ts telemetry.ts ./
COPY plugins ./plugins
COPY routes ./routes
COPY sql ./sql
# The migration runner is its own command (compose's `migrate` service, deploy/k8s/migrate-job.yaml); no
# local-stack code is in the image.
COPY scripts/migrate.ts ./scripts/

USER node
EXPOSE 3000

# Liveness only: readiness (PostgreSQL and Redis reachable) is the orchestrator's business (compose checks
# /health/ready), and a dependency outage must not get the container killed.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/health/live').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# server.ts handles SIGTERM itself (close-with-grace): stop accepting, finish in-flight requests, close pools, exit 0.
STOPSIGNAL SIGTERM
# Serves only. Migrations run before a release as `node scripts/migrate.ts` (DATABASE_DIRECT_URL, else DATABASE_URL).
CMD ["node", "server.ts"]
