#!/usr/bin/env bash
# Builds Jaeger v2 (an OpenTelemetry Collector distribution that stores traces in memory and
# answers queries) from the Go module proxy, once, into a cache, and prints the binary's path.
# The trace test (test-tracing.sh) sends the product's spans to it over OTLP. The build takes
# a few minutes of 2 cores the first time. Environment: CHAT_TOOLS (the cache, shared with
# deploy/validate/tools.sh; default ${XDG_CACHE_HOME:-$HOME/.cache}/chat/deploy-tools).
set -euo pipefail
tools=${CHAT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/chat/deploy-tools}
module=github.com/jaegertracing/jaeger
version=v1.75.0 # Jaeger 2.12: its Go module keeps the v1 numbering
binary="$tools/bin/jaeger-$version"
if [ ! -x "$binary" ]; then
  echo "jaeger: building $module/cmd/jaeger@$version (Go module proxy)" >&2
  mkdir -p "$tools/bin"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  (
    cd "$build"
    go mod init chat-trace-receiver >/dev/null 2>&1
    # Jaeger's own replace directive, which a module that requires it must repeat.
    go mod edit -replace github.com/Shopify/sarama=github.com/Shopify/sarama@v1.33.0
    go get -tool "$module/cmd/jaeger@$version" >&2
    GOFLAGS=-trimpath go build -o "$binary.tmp" "$module/cmd/jaeger" >&2
  )
  mv "$binary.tmp" "$binary"
fi
echo "$binary"
