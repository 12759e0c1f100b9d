# The Portcullis ingress. Build: docker build -t portcullis .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p portcullis-ingress --bin portcullis \
    && cp target/release/portcullis /portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /portcullis /usr/local/bin/portcullis
USER 65532:65532
EXPOSE 8080 8443 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--manifests", "/etc/portcullis/manifests"]
