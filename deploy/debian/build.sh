#!/bin/sh
# Builds the Debian package tollgate_VERSION_ARCH.deb with cargo-deb from a
# tollgate binary that is already built (the release build for `make deb`;
# the tests pass the binary they test). Beside a link to the binary it
# writes what the binary makes of itself (the man page, the bash and zsh
# completions, the topology's JSON Schema) and the Debian changelog; cargo-deb
# packs them with the files [package.metadata.deb] in Cargo.toml names, the
# binary stripped of its debug information.
# Usage: [DEB_VERSION=0.1.0-2] deploy/debian/build.sh [BINARY] [OUT] [cargo-deb options...]
# VERSION is the binary's version with the revision 1, or DEB_VERSION.
# Prints the package's path.
set -eu
root="$(cd "$(dirname "$0")/../.." && pwd)"
binary="${1:-$root/target/release/tollgate}"
out="${2:-$root/target/debian}"
if [ $# -gt 2 ]; then shift 2; else set --; fi
version="${DEB_VERSION:-$("$binary" --version | awk '{print $2}')-1}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/release" "$out"
# cargo-deb reads target/release/ from CARGO_TARGET_DIR: the stage.
ln "$binary" "$stage/release/tollgate" 2>/dev/null || cp "$binary" "$stage/release/tollgate"
"$binary" man | gzip -9n >"$stage/release/tollgate.1.gz"
"$binary" completions bash >"$stage/release/tollgate.bash"
"$binary" completions zsh >"$stage/release/_tollgate"
"$binary" schema >"$stage/release/tollgate.schema.json"
date="$(date -R ${SOURCE_DATE_EPOCH:+-d "@$SOURCE_DATE_EPOCH"})"
gzip -9n >"$stage/release/changelog.Debian.gz" <<CHANGELOG
tollgate ($version) unstable; urgency=medium

  * Built as $("$binary" --version | sed 's/^tollgate //').
  * What changed is in the project's CHANGELOG.md, and how to run it in
    /usr/share/doc/tollgate/README.md.

 -- tollgate maintainers <maintainers@tollgate.example.org>  $date
CHANGELOG
CARGO_TARGET_DIR="$stage" cargo deb --manifest-path "$root/Cargo.toml" --no-build \
	--deb-version "$version" --strip --output "$out" "$@" | tail -n 1
