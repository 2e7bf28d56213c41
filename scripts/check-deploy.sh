#!/usr/bin/env bash
# Checks deploy/ with the real checkers:
#  - the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate --strict, from
#    PyPI, in .venv);
#  - the systemd units with `systemd-analyze verify` (any complaint fails; ExecStart's
#    /usr/local/bin is pointed at this build's binaries, since verify checks they exist);
#  - the Slurm batch script, run here as a one-node allocation: `srun` and `scontrol` are the
#    only stand-ins (they run the command on this host); the script's scheduler, worker and
#    readiness wait are real, and `tessera status` must list the node's worker.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${TESSERA_BIN_DIR:-$(swift build --show-bin-path)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== Kubernetes manifests"
if [ ! -x .venv/bin/kubernetes-validate ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q kubernetes-validate
fi
out="$(.venv/bin/kubernetes-validate --strict deploy/kubernetes/*.yaml 2>&1)"
echo "$out"
if echo "$out" | grep -qv '^INFO .* passed for resource'; then
  echo "check-deploy: the Kubernetes manifests do not validate" >&2
  exit 1
fi

echo "== systemd units"
if command -v systemd-analyze >/dev/null; then
  for f in deploy/systemd/*.service; do sed "s#/usr/local/bin#$bin#g" "$f" > "$tmp/$(basename "$f")"; done
  cp "$tmp/tessera-worker@.service" "$tmp/tessera-worker@node1.service"
  out="$(systemd-analyze verify "$tmp/tessera-scheduler.service" "$tmp/tessera-worker@node1.service" 2>&1)" || { echo "$out"; exit 1; }
  if [ -n "$out" ]; then
    echo "$out"
    echo "check-deploy: systemd-analyze verify complained about the units" >&2
    exit 1
  fi
  echo "verified: tessera-scheduler.service, tessera-worker@.service"
else
  echo "skipped: systemd-analyze not found (apt-get install systemd)"
fi

echo "== Slurm batch script (one node, here)"
mkdir -p "$tmp/shims" "$tmp/keys"
cat > "$tmp/shims/scontrol" <<'EOF'
#!/usr/bin/env bash
# `scontrol show hostnames LIST` for a one-node allocation: this host.
[ "$1 $2" = "show hostnames" ] && hostname -s
EOF
cat > "$tmp/shims/srun" <<'EOF'
#!/usr/bin/env bash
# One node: run the step's command here, without srun's options.
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
exec "$@"
EOF
chmod +x "$tmp/shims/scontrol" "$tmp/shims/srun"
node="$(hostname -s)"
user="${USER:-$(id -un)}"
"$bin/tessera" keys init --dir "$tmp/keys" >/dev/null
"$bin/tessera" keys add-worker "$node" --dir "$tmp/keys" >/dev/null
"$bin/tessera" keys add-user "$user" --dir "$tmp/keys" >/dev/null
port=$((20000 + RANDOM % 10000))
out="$(PATH="$tmp/shims:$PATH" SLURM_JOB_NODELIST="$node" TESSERA_BIN="$bin" TESSERA_KEYS="$tmp/keys" \
  TESSERA_REGISTRY="$tmp/registry.sqlite" TESSERA_DATA="$tmp/data" TESSERA_PORT="$port" TESSERA_PEER_PORT="$((port + 2))" \
  timeout 120 deploy/slurm/tessera.sbatch sh -c '"$0/tessera" status --scheduler "$TESSERA_SCHEDULER"' "$bin" 2>&1)"
echo "$out" | grep -v ' info \| notice ' || true
if ! echo "$out" | grep -q "1 of 1 workers registered" || ! echo "$out" | grep -q " $node "; then
  echo "check-deploy: the Slurm script did not bring up a scheduler with this node's worker" >&2
  exit 1
fi
echo "check-deploy: all deployment files check"
