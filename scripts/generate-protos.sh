#!/usr/bin/env bash
# Regenerates the committed Swift code from Protos/ (the one source of truth for the wire).
# Needs protoc (Debian: protobuf-compiler); builds protoc-gen-swift from the swift-protobuf
# dependency the package already resolves.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc not found: apt-get install -y protobuf-compiler" >&2; exit 1; }
swift build -c release --product protoc-gen-swift >&2
plugin="$(swift build -c release --show-bin-path)/protoc-gen-swift"
protoc --plugin=protoc-gen-swift="$plugin" \
  --swift_opt=Visibility=Public --swift_opt=FileNaming=DropPath \
  --swift_out=Sources/TesseraProtocol/Generated \
  -I Protos Protos/tessera/v1/tessera.proto
# The Python client's module, when protoc can write it.
if [ -d Clients/python/tessera ]; then
  protoc --python_out=Clients/python/tessera -I Protos Protos/tessera/v1/tessera.proto
fi
echo "generated Sources/TesseraProtocol/Generated/tessera.pb.swift" >&2
