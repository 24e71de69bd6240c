#!/usr/bin/env bash
# Builds the image seatd:latest, FROM scratch (no registry needed):
#   bash docker/build.sh
# It builds the seatd and seatctl binaries with the project's one cargo profile (the
# one the tests use, so RocksDB is compiled once per machine), strips their debug
# info, and copies them with exactly the shared libraries ldd says they need.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seatd/target}"
TAG="${SEATD_IMAGE:-seatd:latest}"

cargo build --workspace --bins
bin_dir="$CARGO_TARGET_DIR/debug"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/data" "$ctx/certs" \
    "$ctx/signing" "$ctx/auth"
for b in seatd seatctl; do
    cp "$bin_dir/$b" "$ctx/rootfs/bin/$b"
    strip --strip-debug "$ctx/rootfs/bin/$b"
done
# Every library either binary links, at the path the dynamic loader looks for it.
for lib in $(for b in seatd seatctl; do ldd "$ctx/rootfs/bin/$b"; done \
        | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
done
printf 'root:x:0:0:root:/:/bin/seatd\nseatd:x:10001:10001:seatd:/data:/bin/seatd\n' > "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nseatd:x:10001:\n' > "$ctx/rootfs/etc/group"
chmod 1777 "$ctx/rootfs/tmp"
cp docker/Dockerfile "$ctx/Dockerfile"

docker build --quiet -t "$TAG" "$ctx" >/dev/null
size=$(docker image inspect "$TAG" --format '{{.Size}}')
echo "built $TAG: $((size / 1024 / 1024)) MiB"
