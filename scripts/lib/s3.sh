# A real S3 server for tests and the quickstart: moto's (PyPI moto[server], pinned, in a
# virtual environment of its own under the cache directory), and Debian's awscli as the
# independent client. Source it after common.sh; then:
#   s3_tools     installs them when missing; sets MOTO_SERVER and AWS_CLI
#   s3_start     starts moto on a free loopback port; sets S3_ENDPOINT and exports the test
#                credentials (moto checks none); s3_stop stops it
MOTO_VERSION=5.2.5
MOTO_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/nacre/moto-$MOTO_VERSION"
MOTO_SERVER="$MOTO_VENV/bin/moto_server"
# Debian's, by path: a pip-installed `aws` earlier on the PATH is not the one meant.
AWS_CLI=/usr/bin/aws
S3_PID=

s3_tools() {
    if [ ! -x "$AWS_CLI" ]; then
        [ "$(id -u)" -eq 0 ] || die "missing awscli; install it (apt-get install awscli) or run as root"
        echo "nacre: installing awscli with apt-get" >&2
        apt-get update -qq >/dev/null || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends awscli >/dev/null
    fi
    if [ ! -x "$MOTO_SERVER" ]; then
        if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
            need_packages_always python3-venv
        fi
        echo "nacre: installing moto[server]==$MOTO_VERSION (PyPI) in $MOTO_VENV" >&2
        rm -rf "$MOTO_VENV"
        python3 -m venv "$MOTO_VENV"
        "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    fi
    [ -x "$MOTO_SERVER" ] || die "moto's server is not at $MOTO_SERVER after installing it"
}

# need_packages_always PKG ... — installs Debian packages (no command to look for).
need_packages_always() {
    [ "$(id -u)" -eq 0 ] || die "missing $*; install them (apt-get install $*) or run as root"
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

s3_stop() {
    if [ -n "$S3_PID" ]; then
        kill -TERM "$S3_PID" 2>/dev/null || true
        wait "$S3_PID" 2>/dev/null || true
    fi
    S3_PID=
}

# s3_leaked — prints the pids of moto servers still running (none, after s3_stop).
s3_leaked() {
    pgrep -f "$MOTO_SERVER -H 127.0.0.1" || true
}

s3_start() {
    local port waited=0
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$MOTO_SERVER" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
    S3_PID=$!
    until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; do
        [ $waited -lt 300 ] || die "moto did not listen on port $port within 30 s"
        kill -0 "$S3_PID" 2>/dev/null || die "moto exited before listening"
        sleep 0.1
        waited=$((waited + 1))
    done
    S3_ENDPOINT="http://127.0.0.1:$port"
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
}
