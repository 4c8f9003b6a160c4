#!/usr/bin/env bash
# A LAN lab of network namespaces: N "machines" on one Ethernet segment.
#
#   scripts/lab.sh up N          create (or complete) machines 1..N; idempotent
#   scripts/lab.sh exec I CMD... run CMD inside machine I
#   scripts/lab.sh addr I        print machine I's address
#   scripts/lab.sh status        list the lab's namespaces
#   scripts/lab.sh cut I J...    partition: machine I and machines J... no longer reach
#                                each other (blackhole routes both ways); mDNS multicast
#                                still flows, unicast (libp2p, the API) does not
#   scripts/lab.sh heal          remove every cut
#   scripts/lab.sh down          remove the whole lab
#
# Layout: namespace "$LAB_PREFIX-hub" holds bridge br0; each machine "$LAB_PREFIX-I" has
# "eth0" = 10.77.0.(10+I)/24 on a veth pair whose other end is plugged into br0, plus
# loopback and a multicast route (224.0.0.0/4 dev eth0) so mDNS works. The root
# namespace gets no interface at all: multicast can never reach the machine's real
# network. Needs root (CI runs as root). LAB_PREFIX (default "pyalab") lets several
# labs exist at once; each is its own isolated 10.77.0.0/24.
set -euo pipefail

PREFIX="${LAB_PREFIX:-pyalab}"
HUB="$PREFIX-hub"
MAX_NODES=200

die() { echo "lab.sh: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces); run with sudo"
    command -v ip >/dev/null || die "needs iproute2 ('ip'); apt-get install iproute2"
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

node_ns() { echo "$PREFIX-$1"; }

node_addr() { echo "10.77.0.$((10 + $1))"; }

check_index() {
    [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$MAX_NODES" ] || die "machine index must be 1..$MAX_NODES, got '$1'"
}

up_hub() {
    ns_exists "$HUB" || ip netns add "$HUB"
    ip -n "$HUB" link set lo up
    if ! ip -n "$HUB" link show br0 >/dev/null 2>&1; then
        ip -n "$HUB" link add br0 type bridge
        # mDNS uses 224.0.0.251 (link-local: always flooded); no snooping surprises.
        ip -n "$HUB" link set br0 type bridge mcast_snooping 0
    fi
    ip -n "$HUB" link set br0 up
}

up_node() {
    local i=$1 ns port addr
    ns=$(node_ns "$i"); port="p$i"; addr=$(node_addr "$i")
    ns_exists "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
        ip -n "$HUB" link del "$port" >/dev/null 2>&1 || true
        ip -n "$HUB" link add "$port" type veth peer name eth0 netns "$ns"
    fi
    ip -n "$HUB" link set "$port" master br0
    ip -n "$HUB" link set "$port" up
    ip -n "$ns" addr replace "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route replace 224.0.0.0/4 dev eth0
}

cmd_up() {
    local n=${1:-}
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "$MAX_NODES" ] || die "usage: lab.sh up N (1..$MAX_NODES)"
    need_root
    up_hub
    for i in $(seq 1 "$n"); do up_node "$i"; done
    echo "lab '$PREFIX' up: $n machines, 10.77.0.11 .. $(node_addr "$n")"
}

cmd_exec() {
    local i=${1:-}
    check_index "$i"
    shift
    [ $# -gt 0 ] || die "usage: lab.sh exec I CMD..."
    need_root
    ns_exists "$(node_ns "$i")" || die "machine $i does not exist; run: lab.sh up N"
    exec ip netns exec "$(node_ns "$i")" "$@"
}

cmd_down() {
    need_root
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^$PREFIX-([0-9]+|hub)$" || true); do
        # Processes still inside keep nothing alive: deleting the namespace detaches them.
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns"
    done
    echo "lab '$PREFIX' down"
}

cmd_cut() {
    local i=${1:-} j
    check_index "$i"
    shift
    [ $# -gt 0 ] || die "usage: lab.sh cut I J..."
    need_root
    for j in "$@"; do
        check_index "$j"
        ip -n "$(node_ns "$i")" route replace blackhole "$(node_addr "$j")/32"
        ip -n "$(node_ns "$j")" route replace blackhole "$(node_addr "$i")/32"
    done
}

cmd_heal() {
    need_root
    local ns r
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^$PREFIX-[0-9]+$" || true); do
        for r in $(ip -n "$ns" route show type blackhole | awk '{print $2}'); do
            ip -n "$ns" route del blackhole "$r"
        done
    done
}

cmd_status() {
    ip netns list | awk '{print $1}' | grep -E "^$PREFIX-([0-9]+|hub)$" || echo "lab '$PREFIX' is down"
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    exec) shift; cmd_exec "$@" ;;
    addr) check_index "${2:-}"; node_addr "$2" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    cut) shift; cmd_cut "$@" ;;
    heal) cmd_heal ;;
    *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
