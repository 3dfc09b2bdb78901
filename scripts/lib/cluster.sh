# A local Nacre cluster of separate processes: one metadata service and N targets, on
# temporary directories over loopback. Source it after common.sh; then:
#   cluster_start N [SCHEME]   starts them (SCHEME: tcp, rdma or auto; default tcp) and sets
#                              NACRE_META, CLUSTER_DIR, CLUSTER_PIDS; with CLUSTER_ONE_SERVER=1
#                              the N targets are one server process sharing its workers, as
#                              a host serves its drives (decision 0015), instead of N processes
#   cluster_stop               stops them (SIGTERM, then SIGKILL after CLUSTER_STOP_SECONDS)
#                              and removes the directories
# cluster_start installs a trap so that an interrupted script still stops everything.

CLUSTER_STOP_SECONDS=${CLUSTER_STOP_SECONDS:-10}
# How long cluster_start waits for each service to say it is serving.
CLUSTER_START_SECONDS=${CLUSTER_START_SECONDS:-30}
CLUSTER_PIDS=()
CLUSTER_DIR=
NACRE_BIN=${NACRE_BIN:-$CARGO_TARGET_DIR/release/nacre}

# A free TCP port on the loopback, from the kernel.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for_line FILE TEXT — waits until FILE has a line containing TEXT.
wait_for_line() {
    local file=$1 text=$2 waited=0
    until grep -q -- "$text" "$file" 2>/dev/null; do
        if [ $waited -ge $((CLUSTER_START_SECONDS * 10)) ]; then
            cat "$file" >&2 || true
            die "timed out after ${CLUSTER_START_SECONDS}s waiting for '$text' in $file"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

cluster_stop() {
    local pid waited
    for pid in "${CLUSTER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${CLUSTER_PIDS[@]}"; do
        waited=0
        while kill -0 "$pid" 2>/dev/null && [ $waited -lt $((CLUSTER_STOP_SECONDS * 10)) ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    CLUSTER_PIDS=()
    if [ -n "$CLUSTER_DIR" ] && [ -z "${NACRE_KEEP_CLUSTER:-}" ]; then
        rm -rf "$CLUSTER_DIR"
    fi
    CLUSTER_DIR=
}

cluster_start() {
    local n=$1 scheme=${2:-tcp} host=${CLUSTER_HOST:-127.0.0.1} i port
    [ -x "$NACRE_BIN" ] || die "$NACRE_BIN is not built (cargo build --release -p nacre-cli)"
    CLUSTER_DIR=$(mktemp -d "${CLUSTER_PARENT:-/var/tmp}/nacre-cluster.XXXXXX")
    trap 'cluster_stop' EXIT
    trap 'echo "nacre: interrupted; stopping the cluster" >&2; cluster_stop; exit 130' INT TERM
    port=$(free_port)
    "$NACRE_BIN" serve --meta "$CLUSTER_DIR/meta" --listen "$scheme://$host:$port" \
        >"$CLUSTER_DIR/meta.log" 2>&1 &
    CLUSTER_PIDS+=($!)
    wait_for_line "$CLUSTER_DIR/meta.log" "serving"
    NACRE_META="$scheme://$host:$port"
    export NACRE_META
    for ((i = 0; i < n; i++)); do
        "$NACRE_BIN" mkfs --index "$i" "$CLUSTER_DIR/target$i" >/dev/null
    done
    if [ "${CLUSTER_ONE_SERVER:-0}" = 1 ]; then
        local dirs=()
        for ((i = 0; i < n; i++)); do dirs+=(--target "$CLUSTER_DIR/target$i"); done
        # Port 0: each target's listener takes a free port of its own.
        "$NACRE_BIN" serve "${dirs[@]}" --meta "$NACRE_META" --listen "$scheme://$host:0" \
            ${CLUSTER_TARGET_ARGS:-} >"$CLUSTER_DIR/targets.log" 2>&1 &
        CLUSTER_PIDS+=($!)
        for ((i = 0; i < n; i++)); do
            wait_for_line "$CLUSTER_DIR/targets.log" "nacre target $i: serving"
        done
        return
    fi
    for ((i = 0; i < n; i++)); do
        port=$(free_port)
        "$NACRE_BIN" serve --target "$CLUSTER_DIR/target$i" --meta "$NACRE_META" \
            --listen "$scheme://$host:$port" ${CLUSTER_TARGET_ARGS:-} \
            >"$CLUSTER_DIR/target$i.log" 2>&1 &
        CLUSTER_PIDS+=($!)
    done
    for ((i = 0; i < n; i++)); do
        wait_for_line "$CLUSTER_DIR/target$i.log" "serving"
    done
}
