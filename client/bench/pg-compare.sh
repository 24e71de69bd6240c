#!/usr/bin/env bash
# The same flash-sale workload against PostgreSQL and against seatd, in one run,
# printing one line for each. Not part of CI.
#
#   bash client/bench/pg-compare.sh [--seats 1000000] [--clients 64] [--secs 10]
#
# PostgreSQL does what the seed's design does: one transaction per hold attempt,
# a compare-and-set UPDATE of the block's seats (`state = available`), all or
# nothing, plus the reservation row, with synchronous_commit on and fsync on. A
# throwaway server is started on a free loopback port in a temporary directory.
# The load is pgbench: blocks of 1-4 adjacent seats in a random row of 50.
# seatd gets `seatctl bench` through client/bench/cluster-bench.sh (3 replicas
# and a frontend, fsync on). Both load generators run on this machine, too.
set -euo pipefail
cd "$(dirname "$0")/../.."

seats=1000000 clients=64 secs=10
while [ $# -gt 0 ]; do
    case "$1" in
        --seats) seats=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --secs) secs=$2; shift 2 ;;
        *) echo "usage: $0 [--seats N] [--clients N] [--secs N]" >&2; exit 2 ;;
    esac
done
rows=$((seats / 50))

pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$pgbin" ] || [ ! -x "$pgbin/postgres" ] || ! command -v pgbench >/dev/null; then
    echo "PostgreSQL server and pgbench are needed: apt-get install postgresql postgresql-contrib" >&2
    exit 2
fi

dir="$(mktemp -d)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$dir"
cleanup() {
    as_pg "$pgbin/pg_ctl" -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$pgbin/initdb" -D "$dir/pg" -A trust -U bench >/dev/null
as_pg "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start -o \
    "-p $port -k $dir -c listen_addresses='' -c synchronous_commit=on -c fsync=on \
     -c max_connections=$((clients + 20)) -c shared_buffers=512MB" >/dev/null
psql=(psql -q -X -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U bench)
"${psql[@]}" -d postgres -c "CREATE DATABASE bench"
"${psql[@]}" -d bench <<SQL
CREATE TABLE seats (
    row_no int NOT NULL, num int NOT NULL,
    state smallint NOT NULL DEFAULT 0,          -- 0 available, 1 held
    version bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (row_no, num));
CREATE TABLE reservations (id bigserial PRIMARY KEY, user_id text, row_no int, first int, n int);
INSERT INTO seats (row_no, num) SELECT r, s FROM generate_series(0, $rows - 1) r, generate_series(1, 50) s;
ANALYZE seats;
-- The seed's hold: CAS on every seat of the block, all or nothing, and the reservation.
CREATE FUNCTION hold_block(r int, f int, n int, u text) RETURNS boolean LANGUAGE plpgsql AS \$\$
DECLARE got int;
BEGIN
    UPDATE seats SET state = 1, version = version + 1
     WHERE row_no = r AND num BETWEEN f AND f + n - 1 AND state = 0;
    GET DIAGNOSTICS got = ROW_COUNT;
    IF got <> n THEN RAISE EXCEPTION 'conflict'; END IF;
    INSERT INTO reservations (user_id, row_no, first, n) VALUES (u, r, f, n);
    RETURN true;
EXCEPTION WHEN raise_exception THEN
    RETURN false;
END \$\$;
SQL
cat > "$dir/hold.sql" <<'SQL'
\set r random(0, :rows - 1)
\set n random(1, 4)
\set f random(1, 51 - :n)
SELECT hold_block(:r, :f, :n, 'c' || :client_id || '-' || random());
SQL

( cd "$dir" && pgbench -n -h "$dir" -p "$port" -U bench -c "$clients" -j 2 -T "$secs" \
    -D rows="$rows" -f hold.sql --max-tries=10 -l --log-prefix=pgb bench >"$dir/pgbench.out" 2>&1 )
holds=$("${psql[@]}" -d bench -At -c "SELECT count(*) FROM reservations")
held=$("${psql[@]}" -d bench -At -c "SELECT count(*) FROM seats WHERE state = 1")
reserved=$("${psql[@]}" -d bench -At -c "SELECT coalesce(sum(n), 0) FROM reservations")
python3 - "$dir" "$secs" "$holds" "$held" "$reserved" <<'PY'
import glob, sys
d, secs, holds, held, reserved = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lat = []
for f in glob.glob(f"{d}/pgb*"):
    for line in open(f):
        p = line.split()
        if len(p) >= 3 and p[2].isdigit():
            lat.append(int(p[2]))
lat.sort()
def pct(q):
    return lat[min(len(lat) - 1, round((len(lat) - 1) * q))] / 1000 if lat else 0.0
n = len(lat)
print(f"postgres: decisions_per_s={n / secs:.0f} holds_per_s={holds / secs:.0f} conflicts={n - holds} "
      f"commits_per_s=0 p50_ms={pct(0.5):.2f} p99_ms={pct(0.99):.2f} p999_ms={pct(0.999):.2f} "
      f"oversell={abs(held - reserved)}")
PY
seatd_out="$(bash client/bench/cluster-bench.sh --seats "$seats" --clients "$clients" --secs "$secs")"
echo "seatd:    $(head -1 <<<"$seatd_out")"
