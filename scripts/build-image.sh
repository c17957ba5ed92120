#!/usr/bin/env bash
# Builds the virtgate image with buildah (Debian's package), with no registry:
#   1. cargo build --release, debug info stripped;
#   2. a root file system holding only the binary, the shared libraries `ldd` says it needs, the
#      dynamic loader, and /etc/passwd + /etc/group entries for 65532 (nonroot);
#   3. buildah from scratch, that tree copied in, user/entrypoint/ports as in Containerfile,
#      committed as localhost/virtgate:<version> and written to target/image/virtgate-<version>.oci.tar.
# With registries at hand, `buildah bud -f Containerfile` builds the same image from base
# images instead. Usage: scripts/build-image.sh [TAG]. Needs root (or a rootless buildah setup).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
tag=${1:-$version}
image=localhost/virtgate:$tag

if ! command -v buildah >/dev/null; then
    [ "$(id -u)" -eq 0 ] || { echo "build-image: buildah not found; apt-get install buildah (as root)" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah
fi
# vfs needs no kernel overlay support (containers, CI sandboxes).
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}

cargo build --release --locked --bin virtgate
rootfs=$(mktemp -d)
chmod 0755 "$rootfs"
trap 'rm -rf "$rootfs"' EXIT
install -D -m 0755 target/release/virtgate "$rootfs/usr/local/bin/virtgate"
objcopy --strip-debug "$rootfs/usr/local/bin/virtgate"
# The libraries the binary links, and the loader, at the paths they are looked up by.
for lib in $(ldd target/release/virtgate | grep -o '/[^ ]*'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
mkdir -p "$rootfs/etc" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
mkdir -p "$rootfs/home/nonroot" && chown 65532:65532 "$rootfs/home/nonroot"

container=$(buildah from scratch)
trap 'rm -rf "$rootfs"; buildah rm "$container" >/dev/null 2>&1 || true' EXIT
buildah copy "$container" "$rootfs" / >/dev/null
buildah config \
    --user 65532:65532 \
    --entrypoint '["/usr/local/bin/virtgate"]' \
    --cmd '' \
    --port 16514 --port 16580 --port 16581 \
    --workingdir /home/nonroot \
    --label org.opencontainers.image.title=virtgate \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.source="Containerfile (built by scripts/build-image.sh)" \
    "$container"
previous=$(buildah images -q "$image" 2>/dev/null || true)
buildah commit --rm "$container" "$image" >/dev/null
# The image this tag named before is left without a name: remove it (only that one).
if [ -n "$previous" ] && [ "$previous" != "$(buildah images -q "$image")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
fi
mkdir -p target/image
rm -f "target/image/virtgate-$tag.oci.tar"
buildah push "$image" "oci-archive:$ROOT/target/image/virtgate-$tag.oci.tar:virtgate:$tag" >/dev/null
echo "built $image ($(du -h "target/image/virtgate-$tag.oci.tar" | cut -f1) as target/image/virtgate-$tag.oci.tar)"
# The image's file system is complete: its binary runs in it alone, as its user (chroot; no
# container runtime is needed for that).
if [ "$(id -u)" -eq 0 ] && command -v chroot >/dev/null; then
    out=$(chroot --userspec=65532:65532 "$rootfs" /usr/local/bin/virtgate --version) \
        || { echo "build-image: the binary does not run inside the image's file system" >&2; exit 1; }
    echo "runs inside the image's file system as 65532: $out"
fi
