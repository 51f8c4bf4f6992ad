#!/usr/bin/env bash
# Builds the test image as an OCI layout in $1: busybox-static with every applet (sh, httpd,
# nc, wget, ping, ...), a web root, and /bin/entrypoint (the default command), which serves
# /www on port 80.
# With `two-layers` as $2, a second layer adds /www/layer2.html ("second layer") and deletes
# /data of the first with a whiteout, so a correct unpack needs both layers in order.
# With `accounts` as $2, a second layer replaces /etc/passwd and /etc/group with named users
# and groups: www (1000:1000, home /var/www, also in staff 50 and web 2000) and app
# (1001:1001, also in staff).
# $CONFIG, if set, is the image config's "config" object (JSON) instead of the default one,
# e.g. with "User", "Healthcheck" or "StopSignal".
# Deterministic: the same busybox gives the same digests.
set -euo pipefail
out=${1:?usage: build.sh OUT_DIR [two-layers]}
variant=${2:-}
case $variant in "" | two-layers | accounts) ;; *) echo "unknown variant $variant (expected two-layers or accounts)" >&2; exit 2 ;; esac
busybox=/bin/busybox # from busybox-static: no shared libraries to copy
[ -x "$busybox" ] || { echo "$busybox missing: install busybox-static (cargo xtask setup)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,etc,tmp,www,data,proc,sys,dev}
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
echo 'root:x:0:' > "$rootfs/etc/group"
echo 'hivemind test image' > "$rootfs/www/index.html"
chmod 1777 "$rootfs/tmp"
# The default command. Environment knobs for tests:
#   MESSAGE       printed at start (default "hello")
#   APPEND=TEXT   appended as a line to $APPEND_TO (default /data/lines) at start
#   EXIT_AFTER=N  exit after N seconds with EXIT_CODE (default 1) instead of serving
#   PORT          httpd port (default 80)
#   SIGNAL_LOG    a file the stop signal's name is appended to
# It traps SIGTERM (and SIGUSR1) and exits 0, as a well-behaved service does.
cat > "$rootfs/bin/entrypoint" <<'SH'
#!/bin/sh
echo "hivemind test image on $(hostname): ${MESSAGE:-hello}"
if [ -n "$APPEND" ]; then echo "$APPEND" >> "${APPEND_TO:-/data/lines}"; fi
if [ -n "$EXIT_AFTER" ]; then
  sleep "$EXIT_AFTER"
  echo "exiting with code ${EXIT_CODE:-1}"
  exit "${EXIT_CODE:-1}"
fi
stop() { echo "stopping on $1"; [ -z "$SIGNAL_LOG" ] || echo "$1" >> "$SIGNAL_LOG"; kill $pid 2>/dev/null; exit 0; }
trap 'stop SIGTERM' TERM
trap 'stop SIGUSR1' USR1
httpd -f -v -p "${PORT:-80}" -h /www &
pid=$!
# After httpd is started: health checks that only run a command must not find a replica
# "healthy" long before it serves.
echo "running as $(id) in $(pwd)"
wait $pid
SH
chmod 755 "$rootfs/bin/entrypoint"
touch -d @0 "$rootfs/bin/entrypoint"

blobs=$out/blobs/sha256
rm -rf "$out"; mkdir -p "$blobs"
put_blob() { # file -> prints digest (hex), moves the file into blobs/
  local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$blobs/$d"; echo "$d"
}

diff_ids=()
layers=()
history=()
add_layer() { # dir -> appends the layer's diff id, descriptor and history entry
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf "$work/layer.tar" .
  diff_ids+=("\"sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)\"")
  gzip -n -9 < "$work/layer.tar" > "$work/layer.tar.gz"
  local size digest
  size=$(stat -c %s "$work/layer.tar.gz")
  digest=$(put_blob "$work/layer.tar.gz")
  layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}")
  if [ ${#layers[@]} = 1 ]; then
    history+=('{"created_by":"tests/image/build.sh"}')
  else
    history+=("{\"created_by\":\"tests/image/build.sh layer ${#layers[@]}\"}")
  fi
}
join() { local IFS=,; echo "$*"; }

add_layer "$rootfs"
if [ "$variant" = two-layers ]; then
  upper=$work/upper
  mkdir -p "$upper/www"
  echo 'second layer' > "$upper/www/layer2.html"
  touch "$upper/.wh.data" # OCI whiteout: /data of the layer below is gone
  add_layer "$upper"
fi
if [ "$variant" = accounts ]; then
  upper=$work/accounts
  mkdir -p "$upper/etc" "$upper/var/www" "$upper/home/app"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'www:x:1000:1000:web server:/var/www:/bin/sh' \
    'app:x:1001:1001::/home/app:/bin/sh' > "$upper/etc/passwd"
  printf '%s\n' 'root:x:0:' 'www:x:1000:' 'app:x:1001:' 'staff:x:50:www,app' 'web:x:2000:www' \
    > "$upper/etc/group"
  add_layer "$upper"
fi
default_config='{"Env":["PATH=/bin"],"Cmd":["/bin/entrypoint"],"WorkingDir":"/","ExposedPorts":{"80/tcp":{}}}'

cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":${CONFIG:-$default_config},"rootfs":{"type":"layers","diff_ids":[$(join "${diff_ids[@]}")]},"history":[$(join "${history[@]}")]}
JSON
config_size=$(stat -c %s "$work/config.json")
config=$(put_blob "$work/config.json")

cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[$(join "${layers[@]}")]}
JSON
manifest_size=$(stat -c %s "$work/manifest.json")
manifest=$(put_blob "$work/manifest.json")

echo '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
cat > "$out/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}
JSON
echo "sha256:$manifest"
