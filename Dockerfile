# blmilter in a container: a static binary on distroless, run as an
# unprivileged user.
#
#   docker build -t blmilter --build-arg VERSION=$(git describe --tags --always) .
#   docker run -d --name blmilter -p 127.0.0.1:8895:8895 -p 8080:8080 \
#       -v blmilter-state:/var/lib/blmilter blmilter
#
# Ports: 8895 the milter, 8080 the lookup service and /metrics, 10045 the
# Postfix policy server (off in the shipped config). The config is
# contrib/docker/blmilter.toml; mount your own over /etc/blmilter/blmilter.toml.
# The site's own list is in the volume /var/lib/blmilter.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" -o /out/blmilter ./cmd/blmilter
# The state directory, owned by distroless' nonroot user (65532), for the volume.
RUN mkdir -p /out/state && chown 65532:65532 /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/blmilter /usr/bin/blmilter
COPY --from=build --chown=65532:65532 /out/state /var/lib/blmilter
COPY contrib/docker/blmilter.toml /etc/blmilter/blmilter.toml
USER 65532:65532
WORKDIR /var/lib/blmilter
VOLUME ["/var/lib/blmilter"]
EXPOSE 8895 8080 10045
ENTRYPOINT ["/usr/bin/blmilter"]
CMD ["serve", "-config", "/etc/blmilter/blmilter.toml"]
