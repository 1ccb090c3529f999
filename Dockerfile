# The ledger, built from this repository, run as a non-root user.
#   docker build -t tokenledger .
#   docker run -p 127.0.0.1:8080:8080 -v ledger-data:/data tokenledger
# runs it with NATS embedded; docker-compose.yml runs it on a NATS cluster.
#
# The embedded NATS server listens on the container's loopback
# (127.0.0.1:4222), so nothing outside the container reaches it, not even
# with -p: the safe default, since the API needs no NATS. To let services on
# your host use it (they log in with their API tokens; plain NATS, no TLS),
# say so twice, the listen address and a loopback publish:
#   docker run -p 127.0.0.1:8080:8080 -p 127.0.0.1:4222:4222 -v ledger-data:/data tokenledger \
#     serve --http 0.0.0.0:8080 --data /data --nats-listen 0.0.0.0:4222

FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ledger ./cmd/ledger

FROM alpine:3.22
# wget (busybox) is for health checks. /data holds the ledger's data; /auth
# is where docker-compose.yml's nats-setup writes the NATS credentials and
# configuration: a named volume mounted there starts as this directory,
# owned by the ledger's user, so the unprivileged setup can write in it.
RUN addgroup -S -g 10001 ledger \
 && adduser -S -u 10001 -G ledger -H -h /data ledger \
 && mkdir /data /auth && chown ledger:ledger /data /auth && chmod 0700 /data /auth
COPY --from=build /out/ledger /usr/local/bin/ledger
USER ledger:ledger
# The API. NATS (4222) is published only on purpose: see above.
EXPOSE 8080
ENTRYPOINT ["ledger"]
CMD ["serve", "--http", "0.0.0.0:8080", "--data", "/data", "--nats-listen", "127.0.0.1:4222"]
