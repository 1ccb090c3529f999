# The ledger, built from this repository, run as a non-root user.
#   docker build -t tokenledger .
#   docker run -p 127.0.0.1:8080:8080 -v ledger-data:/data tokenledger
# runs it with NATS embedded; docker-compose.yml runs it on a NATS cluster.

FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ledger ./cmd/ledger

FROM alpine:3.22
# wget (busybox) is for health checks.
RUN addgroup -S -g 10001 ledger \
 && adduser -S -u 10001 -G ledger -H -h /data ledger \
 && mkdir /data && chown ledger:ledger /data && chmod 0700 /data
COPY --from=build /out/ledger /usr/local/bin/ledger
USER ledger:ledger
EXPOSE 8080 4222
ENTRYPOINT ["ledger"]
CMD ["serve", "--http", "0.0.0.0:8080", "--data", "/data", "--nats-listen", "0.0.0.0:4222"]
