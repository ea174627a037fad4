#!/bin/sh
# Packs a release tarball for deploy/ec2/user-data.yaml and manual installs:
#   OUT/tollgate-VERSION-ARCH-linux.tar.gz and its .sha256, holding bin/tollgate,
#   deploy/ (systemd unit, EC2, Prometheus), grafana/, config/ and README.md.
# Usage: deploy/dist.sh [BINARY] [OUT]   (make dist: the release build into dist/)
# Prints the tarball's path.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
binary="${1:-$root/target/release/tollgate}"
out="${2:-$root/dist}"
version="$("$binary" --version | awk '{print $2}')"
name="tollgate-$version-$(uname -m)-linux"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/bin" "$out"
install -m 0755 "$binary" "$stage/$name/bin/tollgate"
cp -R "$root/deploy" "$root/grafana" "$root/config" "$root/README.md" "$stage/$name/"
tar -czf "$out/$name.tar.gz" -C "$stage" "$name"
(cd "$out" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "$out/$name.tar.gz"
