#!/usr/bin/env bash
# Runs `seatctl bench` against a fresh local cluster: 3 `seatd node` processes
# (fsync on) and one `seatd frontend`, all on this machine with the load generator.
# Prints the bench line, each node's resident memory, and the CPU-seconds all seatd
# processes spent per 10,000 holds. Everything it starts is stopped at the end.
#
#   bash client/bench/cluster-bench.sh --seats 1000000 --clients 64 --secs 10 [--commit-ratio 1]
#   BENCH_VIA=nodes bash client/bench/cluster-bench.sh ...   # straight to the nodes
#   BENCH_AUTH=0 bash client/bench/cluster-bench.sh ...       # no tokens (checked by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seatd/target}"
# SEATD_BIN_DIR runs binaries built elsewhere (to compare two builds side by side).
if [ -n "${SEATD_BIN_DIR:-}" ]; then
    bin="$SEATD_BIN_DIR"
else
    cargo build -q --workspace --bins
    bin="$CARGO_TARGET_DIR/debug"
fi

dir="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p1=$(free_port); p2=$(free_port); p3=$(free_port); pf=$(free_port)
q1=$(free_port); q2=$(free_port); q3=$(free_port)
# --peers names the peer ports (mutual TLS, certificates from `seatd certs`).
peers="1=127.0.0.1:$q1,2=127.0.0.1:$q2,3=127.0.0.1:$q3"
"$bin/seatd" certs --out "$dir/certs" --nodes 1,2,3 >/dev/null
# Four servers and the load generator share this machine's cores: one worker thread
# each spends less CPU switching threads (measured: about 10% less CPU per decision).
# SEATD_WORKER_THREADS overrides it (e.g. to compare).
threads=(--worker-threads "${SEATD_WORKER_THREADS:-1}")
# Every node and the frontend check bearer tokens, as in production (BENCH_AUTH=0
# turns that off); the load generator sends an operator's (operators may act as any
# user, as a box office does).
auth=()
if [ "${BENCH_AUTH:-1}" != 0 ]; then
    "$bin/seatd" token keygen --out "$dir/keys" >/dev/null
    auth=(--auth-keys "$dir/keys/public-key.pem")
    SEATD_TOKEN="$("$bin/seatd" token issue --key "$dir/keys/signing-key.pem" --sub bench --role operator --ttl 1h)"
    export SEATD_TOKEN
fi
for i in 1 2 3; do
    port_var="p$i"; peer_var="q$i"
    "$bin/seatd" node --id "$i" --listen "127.0.0.1:${!port_var}" --peer-listen "127.0.0.1:${!peer_var}" \
        --data-dir "$dir/node$i" --certs "$dir/certs" \
        --peers "$peers" --holds-per-user-per-s 0 "${threads[@]}" "${auth[@]}" 2>"$dir/node$i.log" &
    pids+=($!)
done
"$bin/seatd" frontend --listen "127.0.0.1:$pf" --nodes "127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3" \
    --holds-per-user-per-s 0 "${threads[@]}" "${auth[@]}" 2>"$dir/frontend.log" &
pids+=($!)
endpoint="http://127.0.0.1:$pf"
# BENCH_VIA=nodes sends the load to the nodes themselves (no frontend hop).
bench_endpoints=(--endpoint "$endpoint")
if [ "${BENCH_VIA:-frontend}" = nodes ]; then
    bench_endpoints=(--endpoint "http://127.0.0.1:$p1" --endpoint "http://127.0.0.1:$p2" --endpoint "http://127.0.0.1:$p3")
fi
ready=""
for _ in $(seq 1 100); do
    "$bin/seatctl" --endpoint "$endpoint" --timeout 1s status >/dev/null 2>&1 && { ready=1; break; }
    sleep 0.3
done
if [ -z "$ready" ]; then
    echo "the cluster did not come up; its logs:" >&2
    tail -n 20 "$dir"/*.log >&2
    exit 1
fi

# CPU ticks (user + system) of each seatd process, in `pids` order.
cpu_ticks() {
    local out=()
    for p in "${pids[@]}"; do
        read -r -a f < "/proc/$p/stat"
        out+=($((f[13] + f[14])))
    done
    echo "${out[*]}"
}
# Log entries applied across all shards: with the decisions, how many share an entry
# (the batching the client and the proposers achieved). Every entry counts, commits,
# releases and leader no-ops included, so with --commit-ratio the figure is low.
# Prints nothing when the status cannot be read.
applied() {
    "$bin/seatctl" --endpoint "$endpoint" --json status 2>/dev/null |
        python3 -c 'import json,sys; print(sum(s.get("applied", 0) for s in json.load(sys.stdin)["shards"]))' \
            2>/dev/null || true
}
applied_before=$(applied)
before=$(cpu_ticks)
status=0
# The load generator runs under a small wrapper that reports its CPU-seconds too.
line=$(python3 - "$dir/seatctl.cpu" "$bin/seatctl" "${bench_endpoints[@]}" bench "$@" <<'PY'
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{r.ru_utime + r.ru_stime:.2f}")
sys.exit(rc)
PY
) || status=$?
after=$(cpu_ticks)
applied_after=$(applied)
echo "$line"
hz=$(getconf CLK_TCK)
holds=$(sed -n 's/.* holds=\([0-9]*\).*/\1/p' <<<"$line")
conflicts=$(sed -n 's/.* conflicts=\([0-9]*\).*/\1/p' <<<"$line")
decisions=$(( ${holds:-0} + ${conflicts:-0} ))
rss=""
for i in 0 1 2; do
    rss+="node$((i + 1))_rss_mib=$(( $(awk '/VmRSS/ {print $2}' "/proc/${pids[$i]}/status") / 1024 )) "
done
python3 - "$before" "$after" "$hz" "${holds:-0}" "${decisions:-0}" "$(cat "$dir/seatctl.cpu" 2>/dev/null || echo 0)" <<'PY'
import sys
before, after = [list(map(int, a.split())) for a in sys.argv[1:3]]
hz, holds, decisions = map(int, sys.argv[3:6])
bench_cpu = float(sys.argv[6])
each = [(a - b) / hz for a, b in zip(after, before)]
cpu = sum(each)
per = lambda c, n: c / n * 10000 if n else float("nan")
names = ["node1", "node2", "node3", "frontend"]
print(f"seatd_cpu_s={cpu:.1f} cpu_s_per_10k_holds={per(cpu, holds):.2f} "
      f"with_bench_cpu_s_per_10k_decisions={per(cpu + bench_cpu, decisions):.2f}")
print(" ".join(f"{n}_cpu_s={c:.1f}" for n, c in zip(names, each)) + f" seatctl_cpu_s={bench_cpu:.1f}")
PY
echo "$rss"
secs=$(sed -n 's/.* secs=\([0-9.]*\).*/\1/p' <<<"$line")
if [ -n "$applied_before" ] && [ -n "$applied_after" ] && [ -n "$secs" ]; then
    python3 -c "
import sys
e, d, s = int(sys.argv[1]) - int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
if e > 0 and s > 0:
    print(f'log_entries_per_s={e / s:.0f} decisions_per_entry={d / e:.1f}')
" "$applied_after" "$applied_before" "$decisions" "$secs" || true
fi
exit $status
