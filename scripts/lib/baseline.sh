# The network baseline of the benchmark scripts. Source it after common.sh and cluster.sh.

# iperf3_loopback SECONDS JSON UNIT — runs iperf3 over loopback (4 streams, -l 1M) for
# SECONDS, keeps its JSON report in JSON, and prints the received rate in UNIT per second
# (MiB or MB).
iperf3_loopback() {
    local seconds=$1 json=$2 unit=$3 port spid waited=0
    port=$(free_port)
    timeout $((seconds + 30)) iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
    spid=$!
    until ss -ltnH "sport = :$port" 2>/dev/null | grep -q .; do
        waited=$((waited + 1)); [ $waited -lt 100 ] || die "iperf3 server did not start"; sleep 0.1
    done
    iperf3 -c 127.0.0.1 -p "$port" -t "$seconds" -l 1M -P 4 -J >"$json" 2>&1 || true
    wait "$spid" 2>/dev/null || true
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
if j.get("error"):
    sys.exit("iperf3: " + j["error"])
per = {"MiB": 2**20, "MB": 1e6}[sys.argv[2]]
print(j["end"]["sum_received"]["bits_per_second"] / 8 / per)' "$json" "$unit"
}
