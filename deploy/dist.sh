#!/bin/sh
# Packs a release into OUT:
#   tollgate_VERSION-1_ARCH.deb (deploy/debian/build.sh: what deploy/ec2/user-data.yaml
#     installs, and `apt-get install ./tollgate_*.deb` anywhere on Debian or Ubuntu),
#   tollgate-VERSION-ARCH-linux.tar.gz (bin/tollgate, deploy/, grafana/, config/,
#     README.md) for other systems,
#   a .sha256 file for each, and RELEASE-NOTES.md: the downloads with their
#   checksums, how to install each, and the changes (CHANGELOG.md's first section).
# Usage: deploy/dist.sh [BINARY] [OUT]   (make dist: the release build into dist/)
# Prints the paths of the package, the tarball and the notes.
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
deb="$(sh "$root/deploy/debian/build.sh" "$binary" "$out")"
deb_name="$(basename "$deb")"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256" &&
	sha256sum "$deb_name" >"$deb_name.sha256")
sum() { cut -d' ' -f1 "$out/$1.sha256"; }
{
	echo "# tollgate $version"
	echo
	echo "Built as \`$("$binary" --version)\`."
	echo
	echo "## Downloads"
	echo
	echo "| file | what | sha256 |"
	echo "|---|---|---|"
	echo "| \`$deb_name\` | Debian/Ubuntu package | \`$(sum "$deb_name")\` |"
	echo "| \`$name.tar.gz\` | binary and deploy files, other systems | \`$(sum "$name.tar.gz")\` |"
	echo
	echo "## Installing"
	echo
	echo "Debian 12 or Ubuntu 22.04 and later: the package brings the \`tollgate\` user, the"
	echo "systemd unit, \`/etc/tollgate/tollgate.yaml\` (never overwritten by an upgrade),"
	echo "\`/var/log/tollgate\` with its logrotate rule, the man page and bash/zsh completions."
	echo "It starts tollgate when the topology passes \`tollgate -t\`; installing it over an"
	echo "older version upgrades a running tollgate in place, without a failed request."
	echo
	echo '```sh'
	echo "sha256sum -c $deb_name.sha256"
	echo "sudo apt-get install ./$deb_name"
	echo '```'
	echo
	echo "On EC2, \`deploy/ec2/user-data.yaml\` installs the package at boot (set its"
	echo "\`package_url\` and \`package_sha256\` to the ones above)."
	echo
	echo "Other Linux systems: unpack \`$name.tar.gz\`; \`deploy/systemd/tollgate.service\`"
	echo "says how to install the binary and the unit by hand."
	echo
	echo "## Changes"
	echo
	awk '/^## /{n++} n==1 && !/^## /{print} n>1{exit}' "$root/CHANGELOG.md"
} >"$out/RELEASE-NOTES.md"
echo "$deb"
echo "$out/$name.tar.gz"
echo "$out/RELEASE-NOTES.md"
