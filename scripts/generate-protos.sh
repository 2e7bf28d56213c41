#!/usr/bin/env bash
# Regenerates the committed Swift code from Protos/ (the one source of truth for the wire).
# Needs protoc (Debian: protobuf-compiler) and protoc-gen-swift, built here from the same
# swift-protobuf version the package resolves (in its own scratch folder, so it never races the
# main build): PROTOC_GEN_SWIFT=/path/to/protoc-gen-swift overrides that.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc not found: apt-get install -y protobuf-compiler" >&2; exit 1; }
plugin="${PROTOC_GEN_SWIFT:-}"
if [ -z "$plugin" ]; then
  swift build -c release --scratch-path .build-protoc --product protoc-gen-swift >&2
  plugin="$(swift build -c release --scratch-path .build-protoc --show-bin-path)/protoc-gen-swift"
fi
protoc --plugin=protoc-gen-swift="$plugin" \
  --swift_opt=Visibility=Public --swift_opt=FileNaming=DropPath \
  --swift_out=Sources/TesseraProtocol/Generated \
  -I Protos Protos/tessera/v1/tessera.proto Protos/tessera/v1/storage.proto Protos/tessera/v1/catalog.proto
if [ -d Clients/python/tessera ]; then
  protoc --python_out=Clients/python/tessera -I Protos Protos/tessera/v1/*.proto
fi
echo "generated Sources/TesseraProtocol/Generated/*.pb.swift" >&2
