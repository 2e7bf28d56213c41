"""The wire protocol's messages, generated from Protos/tessera/v1 by scripts/generate-protos.sh.

Do not edit the *_pb2.py files: edit the .proto files and run the script again
(tests/test_protos.py fails when these are stale)."""
