#!/usr/bin/env bash
# Builds the Debian package of relayd: target/debian/relayd_VERSION_ARCH.deb.
#
#   scripts/package-deb.sh [--binary PATH] [--out DIR]
#
# --binary packages that relayd instead of building `cargo build --release --locked` (the
# tests package the binary they already built). The package holds the binary, the systemd unit
# (config/relayd.service), /etc/relayd/relayd.toml (config/relayd.toml, a conffile: an upgrade
# keeps the operator's edits), the example cluster configs, the man pages and the bash, zsh and
# fish completions (both written by `relayd generate` from the clap definitions, so they match
# the binary packaged), and the docs. Its maintainer scripts add the `relayd` system user and
# reload systemd; they neither enable nor start the service (docs/operations.md, "Installing
# the Debian package"). Plain dpkg-deb: no debhelper or cargo-deb to install.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: scripts/package-deb.sh [--binary PATH] [--out DIR]" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  cargo build --release --locked --bin relayd
  binary=target/release/relayd
fi

version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

install -D -m 0755 "$binary" "$root/usr/bin/relayd"
# The tests' debug binary carries its symbols: the package does not need them.
if command -v strip >/dev/null; then strip --strip-debug "$root/usr/bin/relayd"; fi
install -D -m 0644 config/relayd.service "$root/usr/lib/systemd/system/relayd.service"
install -D -m 0640 config/relayd.toml "$root/etc/relayd/relayd.toml"
doc="$root/usr/share/doc/relayd"
for example in primary standby witness; do
  install -D -m 0644 "config/$example.toml" "$doc/examples/$example.toml"
done
install -D -m 0644 config/prometheus/relayd.rules.yml "$doc/examples/prometheus/relayd.rules.yml"
install -D -m 0644 config/grafana/relayd.json "$doc/examples/grafana/relayd.json"
install -m 0644 README.md docs/operations.md docs/configuration.md docs/contract.md \
  docs/guarantees.md docs/security.md "$doc/"
[ ! -f CHANGELOG.md ] || gzip -9n < CHANGELOG.md > "$doc/changelog.gz"
cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: relayd

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF

man="$root/usr/share/man/man1"
mkdir -p "$man"
"$binary" generate man "$man" >/dev/null
gzip -9n "$man"/*.1
generated=$(mktemp -d)
"$binary" generate completions "$generated" >/dev/null
install -D -m 0644 "$generated/relayd.bash" "$root/usr/share/bash-completion/completions/relayd"
install -D -m 0644 "$generated/_relayd" "$root/usr/share/zsh/vendor-completions/_relayd"
install -D -m 0644 "$generated/relayd.fish" "$root/usr/share/fish/vendor_completions.d/relayd.fish"
rm -rf "$generated"

mkdir -p "$root/DEBIAN"
echo /etc/relayd/relayd.toml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<EOF
Package: relayd
Version: $version
Architecture: $arch
Maintainer: relayd developers <relayd@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: libc6, passwd
Section: mail
Priority: optional
Homepage: https://github.com/relayd/relayd
Description: primary/warm-standby SMTP relay whose 250 means the mail is on disk
 relayd accepts mail for customer domains and answers 250 only once the message is
 durable on this node (and, in sync mode, on its standby); it relays each message to
 its route, retries and bounces as an MTA does, streams its spool's change log to a
 warm standby and fails over to it, with a witness, without losing acknowledged mail.
EOF
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Adds the system user the unit runs as, and tells systemd of the unit. The service is
# neither enabled nor started: the packaged config accepts no domain until it is edited.
set -e
if [ "$1" = configure ]; then
  if ! getent passwd relayd >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/relayd \
      --shell /usr/sbin/nologin relayd
  fi
  chgrp relayd /etc/relayd/relayd.toml
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
exit 0
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# /var/lib/relayd stays, even on purge: it may hold acknowledged mail nobody delivered yet.
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

mkdir -p "$out"
package="$out/relayd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$root" "$package" >/dev/null
echo "$package"
