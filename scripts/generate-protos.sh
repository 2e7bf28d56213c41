#!/usr/bin/env bash
# Regenerates the committed Swift and Python code from Protos/ (the one source of truth for the wire).
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
# The Python client's modules (tessera/v1/*_pb2.py inside the `tessera` package); a test
# (Clients/python/tests/test_protos.py) fails when they are stale.
protoc --python_out=Clients/python -I Protos Protos/tessera/v1/tessera.proto Protos/tessera/v1/storage.proto Protos/tessera/v1/catalog.proto
echo "generated Sources/TesseraProtocol/Generated/*.pb.swift and Clients/python/tessera/v1/*_pb2.py" >&2
