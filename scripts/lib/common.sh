# Shared by Nacre's scripts: where things are, and installing Debian packages on demand.
# Source it; it defines functions and variables only.

NACRE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$NACRE_ROOT/target}

# need_packages CMD:PKG ... — installs PKG with apt-get when CMD is not on the PATH.
need_packages() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "nacre: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
        return 1
    fi
    echo "nacre: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# die MESSAGE — prints it and exits 1.
die() {
    echo "nacre: $*" >&2
    exit 1
}
