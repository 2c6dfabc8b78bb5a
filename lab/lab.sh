# shellcheck shell=bash
# lab.sh — a private LAN of hosts built from network namespaces, for imgcast's
# end-to-end tests, `img demo` and the benchmarks. Source it from bash:
#
#     . lab/lab.sh
#     lab_enter "$@"          # re-exec this script in a private user+net+mount namespace
#     lab_up 4                # bridge + hosts h0..h3 (10.77.0.10 .. 10.77.0.13)
#     lab_exec h1 ip -br addr
#     pid=$(lab_spawn h1 /tmp/h1.log some-command --flag)
#     lab_loss h1 2           # h1 drops 2% of the UDP packets it receives
#     lab_rate h0 1gbit       # h0's link runs at 1 Gbit/s (both directions)
#     lab_down
#
# Nothing here touches the machine's real network: the bridge, the veth pairs
# and the hosts all live inside a network namespace created by `unshare -Urnm`,
# which starts with nothing but `lo`. lab_init and lab_up refuse to run in a
# namespace that has any other interface, so a lab can never be attached to a
# real NIC. Works as root and as an unprivileged user (needs unprivileged user
# namespaces, which this kernel allows).
#
# Functions
#   lab_enter ARGS...   If not yet inside a private lab namespace, re-exec the
#                       calling script (or the `bash -c` string) under
#                       `unshare -Urnm --propagation private` with LAB_INSIDE=1
#                       and ARGS; once inside, calls lab_init and returns.
#   lab_unshare CMD...  Run CMD (as a child, returning its status) in a new
#                       private user+net+mount namespace with LAB_INSIDE=1.
#                       CMD must call lab_enter or lab_init itself.
#   lab_init            Inside the private namespace: bring lo up and mount a
#                       tmpfs on /run so `ip netns add` works. Idempotent.
#   lab_up N            Create bridge $LAB_BRIDGE (multicast snooping off, so
#                       multicast floods to every port) and hosts h0..h(N-1):
#                       netns hI with veth `eth0` on the bridge, address
#                       10.77.0.(I+10)/24, lo up, route 224.0.0.0/4 dev eth0.
#                       Hosts that already exist are kept (so lab_up can grow a
#                       lab). Waits until every bridge port forwards.
#   lab_hosts           Print the names of the hosts, one a line, in order.
#   lab_ip HOST         Print HOST's IPv4 address (h3 -> 10.77.0.13).
#   lab_exec HOST CMD...  Run CMD inside HOST's network namespace, in the
#                       foreground; returns CMD's status. Uses `ip netns exec`
#                       (gives a matching /sys) and falls back to
#                       `nsenter --net=/run/netns/HOST` where /sys can't be
#                       remounted.
#   lab_spawn HOST LOG CMD...  Start CMD in HOST in the background, stdout and
#                       stderr to LOG, stdin from /dev/null. Prints the PID and
#                       sets LAB_LAST_PID. The PID is CMD's own (exec, no
#                       wrapper), so `kill PID` reaches it. Use
#                       `lab_spawn ... >/dev/null; p=$LAB_LAST_PID` if you want
#                       to `wait` for it (a `$(...)` spawn is not your child).
#   lab_wait SECS PID...  Wait at most SECS seconds for the PIDs to exit.
#                       Returns 124 on timeout, else the status of the last
#                       PID that is a child of this shell (0 for non-children).
#   lab_kill PID...     TERM, then after 2 s KILL, the given PIDs (only ones
#                       started by lab_spawn are ever killed by lab_down).
#   lab_loss HOST PCT   HOST drops PCT percent (0..100, up to 2 decimals) of
#                       incoming UDP at random, with an nftables rule
#                       `numgen random mod 10000 < PCT*100 drop` on its input
#                       hook (this kernel has no netem). PCT 0 removes it.
#                       The rule counts what it sees and what it drops:
#                       `nft list table inet lab_loss` in HOST shows both.
#                       `lab_loss HOST PCT MINLEN` drops only packets of at
#                       least MINLEN bytes (IP length): data, not the small
#                       control packets of the protocol under test.
#   lab_wire HOST       The bridge port towards HOST cuts GSO super-packets
#                       into wire-size datagrams (gso_max_segs 1), as a NIC
#                       puts them on the wire. Without it a sender's UDP GSO
#                       send (up to 41 datagrams here) crosses the bridge as
#                       one packet, and lab_loss drops all of it or none: a
#                       burst loss no real LAN has, that tools without GSO
#                       never see.
#   lab_gro HOST        HOST's eth0 aggregates what it receives (GRO, as a NIC
#                       does): NAPI on its veth, and the bridge port towards
#                       HOST without TSO (a veth hands a forwarded packet to
#                       GRO only then). Sockets that ask (UDP_GRO) then get
#                       runs of datagrams in one buffer.
#   lab_segment HOST    HOST's own UDP GSO sends are cut into wire datagrams on
#                       its eth0 (tx-udp-segmentation off), before the bridge.
#   lab_loss_port HOST PCT [MINLEN]  As lab_loss, but the bridge drops the
#                       packets on their way to HOST's port: before HOST's GRO
#                       (lab_gro) joins them, so each wire datagram is lost
#                       alone. Wire-size packets need lab_segment on senders.
#   lab_rate HOST RATE [both|out|in]  Limit HOST's link with tbf: `out` shapes
#                       HOST's eth0 egress, `in` the bridge port's egress
#                       towards HOST. RATE in tc units (1gbit, 100mbit, 500kbit).
#                       Burst = max(2 ms at RATE, 128 KiB) so GSO super-packets
#                       pass and 1 Gbit/s is reached; queue = 20 ms. A UDP
#                       sender behind `out` is throttled by its socket buffer,
#                       not dropped. RATE `off` removes the limit.
#   lab_tap NAME        Create tap device lab-NAME on the bridge, for a qemu
#                       VM on the LAN: `-netdev tap,id=n,ifname=lab-NAME,
#                       script=no,downscript=no`. The VM is a host of the lab
#                       like the others (its address comes from the VM, e.g.
#                       by DHCP from a server a test spawns in a host).
#   lab_track PID...    Have lab_down kill PIDs (e.g. a qemu started with &).
#   lab_down            Kill what lab_spawn started, delete the hosts, veths,
#                       taps and bridge. (All of it dies with the namespace anyway.)
#
# Variables (set before lab_up to change): LAB_BRIDGE (labbr0), LAB_NET
# (10.77.0), LAB_BASE (10: host i gets .(LAB_BASE+i)), LAB_STATE (/run/lab),
# LAB_EXEC_MODE (ipnetns or nsenter; default: ipnetns if it works).

LAB_BRIDGE=${LAB_BRIDGE:-labbr0}
LAB_NET=${LAB_NET:-10.77.0}
LAB_BASE=${LAB_BASE:-10}
LAB_STATE=${LAB_STATE:-/run/lab}
LAB_LAST_PID=

lab__err() { echo "lab: $*" >&2; }

# True if this network namespace holds nothing but lo and interfaces made by
# lab_up (bridge, lab-* veth ends). The host's namespace always fails this.
lab__private_netns() {
    local names n
    names=$(ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }') || return 1
    [ -n "$names" ] || return 1
    for n in $names; do
        case $n in
            lo | "$LAB_BRIDGE" | lab-*) ;;
            *) return 1 ;;
        esac
    done
    return 0
}

# True if our mount namespace is surely not the machine's initial one. If we
# can read init's mount namespace and it is ours, we are in the initial one.
lab__private_mntns() {
    local init self
    self=$(readlink /proc/self/ns/mnt 2>/dev/null) || return 1
    init=$(readlink /proc/1/ns/mnt 2>/dev/null) || return 0
    [ "$init" != "$self" ]
}

lab_unshare() {
    command -v unshare >/dev/null || { lab__err "unshare not found (util-linux)"; return 1; }
    LAB_INSIDE=1 unshare -Urnm --propagation private -- "$@"
}

lab_enter() {
    if lab__private_netns; then
        lab_init
        return
    fi
    if [ -n "${LAB_INSIDE:-}" ]; then
        lab__err "LAB_INSIDE is set but this network namespace has other interfaces; refusing"
        exit 1
    fi
    if [ -n "${BASH_EXECUTION_STRING:-}" ]; then
        # `bash -c '...'`: run the same string again, inside.
        LAB_INSIDE=1 exec unshare -Urnm --propagation private -- \
            bash -c "$BASH_EXECUTION_STRING" "$0" "$@"
    fi
    local script=${LAB_SCRIPT:-$0}
    if [ ! -f "$script" ]; then
        lab__err "lab_enter: can't re-exec '$script'; set LAB_SCRIPT or run under 'unshare -Urnm'"
        exit 1
    fi
    LAB_INSIDE=1 exec unshare -Urnm --propagation private -- bash "$script" "$@"
}

lab_init() {
    if ! lab__private_netns; then
        lab__err "lab_init: not in a private network namespace (run under 'unshare -Urnm' or use lab_enter)"
        return 1
    fi
    if ! lab__private_mntns; then
        lab__err "lab_init: in the initial mount namespace; won't mount over /run"
        return 1
    fi
    export LAB_INSIDE=1
    ip link set lo up 2>/dev/null || true
    if [ ! -e /run/.lab-tmpfs ]; then
        mount -t tmpfs -o mode=755 lab-run /run || { lab__err "mount tmpfs on /run failed"; return 1; }
        : >/run/.lab-tmpfs
    fi
    mkdir -p /run/netns "$LAB_STATE"
    : >>"$LAB_STATE/pids"
}

lab_hosts() {
    [ -d /run/netns ] || return 0
    ls /run/netns 2>/dev/null | grep -E '^h[0-9]+$' | sort -t h -k 2 -n
}

lab_ip() {
    local h=${1:?lab_ip HOST}
    local i=${h#h}
    case $i in '' | *[!0-9]*) lab__err "lab_ip: bad host '$h'"; return 1 ;; esac
    echo "$LAB_NET.$((LAB_BASE + i))"
}

lab__exec_mode() {
    cat "$LAB_STATE/exec_mode" 2>/dev/null || echo ipnetns
}

lab_exec() {
    local h=${1:?lab_exec HOST CMD...}
    shift
    if [ "$(lab__exec_mode)" = nsenter ]; then
        nsenter --net="/run/netns/$h" -- "$@"
    else
        ip netns exec "$h" "$@"
    fi
}

lab_spawn() {
    local h=${1:?lab_spawn HOST LOG CMD...} log=${2:?lab_spawn HOST LOG CMD...}
    shift 2
    if [ "$(lab__exec_mode)" = nsenter ]; then
        nsenter --net="/run/netns/$h" -- "$@" >"$log" 2>&1 </dev/null &
    else
        ip netns exec "$h" "$@" >"$log" 2>&1 </dev/null &
    fi
    LAB_LAST_PID=$!
    echo "$LAB_LAST_PID" >>"$LAB_STATE/pids"
    echo "$LAB_LAST_PID"
}

# Sets LAB__STATE to the process state letter (R, S, Z, ...) of PID, empty if gone. Builtins
# only: lab_wait polls it while the programs under test run, and a fork per poll (a subshell and
# cat, 20 times a second) took about 4% of a 2-core host from the tools a benchmark measures.
lab__state() {
    local s
    LAB__STATE=
    { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 0
    s=${s##*) }
    LAB__STATE=${s%% *}
}

lab_wait() {
    local secs=${1:?lab_wait SECS PID...}
    shift
    local deadline=$((SECONDS + secs)) p alive rc=0 st nap
    # A pipe nobody writes to: `read -t` on it sleeps without forking a sleep(1) per poll.
    exec {nap}<> <(:)
    while :; do
        alive=0
        for p in "$@"; do
            # A zombie child still answers kill -0; treat it as exited.
            if kill -0 "$p" 2>/dev/null; then
                lab__state "$p"
                if [ "$LAB__STATE" != Z ]; then
                    alive=1
                    break
                fi
            fi
        done
        [ $alive = 0 ] && break
        if [ $SECONDS -ge $deadline ]; then
            exec {nap}>&-
            return 124
        fi
        read -r -t 0.02 -u "$nap" _ || true
    done
    exec {nap}>&-
    for p in "$@"; do
        st=0
        wait "$p" 2>/dev/null || st=$?
        [ $st = 127 ] && st=0 # not our child: status unknown
        rc=$st
    done
    return $rc
}

lab_kill() {
    local p i
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for i in $(seq 40); do
        local any=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && any=1; done
        [ $any = 0 ] && return 0
        sleep 0.05
    done
    for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
    return 0
}

lab_up() {
    local n=${1:?lab_up N}
    case $n in '' | *[!0-9]*) lab__err "lab_up: bad count '$n'"; return 1 ;; esac
    [ -e /run/.lab-tmpfs ] || lab_init || return 1
    lab__private_netns || { lab__err "lab_up: not in a private network namespace; refusing"; return 1; }
    local i h port addr
    if ! ip link show "$LAB_BRIDGE" >/dev/null 2>&1; then
        ip link add name "$LAB_BRIDGE" type bridge mcast_snooping 0 mcast_querier 0 \
            forward_delay 0 stp_state 0 || return 1
        ip link set "$LAB_BRIDGE" up || return 1
    fi
    for ((i = 0; i < n; i++)); do
        h=h$i port=lab-h$i
        [ -e "/run/netns/$h" ] && continue
        addr=$(lab_ip "$h")
        ip netns add "$h" || return 1
        ip link add name "$port" type veth peer name eth0 netns "$h" || return 1
        ip link set "$port" master "$LAB_BRIDGE" up || return 1
        ip -n "$h" link set lo up || return 1
        ip -n "$h" addr add "$addr/24" dev eth0 || return 1
        ip -n "$h" link set eth0 up || return 1
        ip -n "$h" route add 224.0.0.0/4 dev eth0 || return 1
    done
    # Decide once how to enter a host: `ip netns exec` remounts /sys, which
    # some user namespaces forbid; nsenter needs no mounts.
    if [ ! -e "$LAB_STATE/exec_mode" ]; then
        if [ -n "${LAB_EXEC_MODE:-}" ]; then
            echo "$LAB_EXEC_MODE" >"$LAB_STATE/exec_mode"
        elif ip netns exec h0 true 2>/dev/null; then
            echo ipnetns >"$LAB_STATE/exec_mode"
        else
            echo nsenter >"$LAB_STATE/exec_mode"
        fi
    fi
    # Wait (bounded) until every port forwards and every eth0 is up.
    local tries
    for ((tries = 0; tries < 100; tries++)); do
        if ! bridge link show 2>/dev/null | grep -E "lab-h[0-9]+" | grep -vq 'state forwarding'; then
            break
        fi
        sleep 0.05
    done
    return 0
}

# rate string (tc units) -> bits per second
lab__rate_bps() {
    echo "$1" | awk '{
        s = tolower($0)
        if (!match(s, /^[0-9]+(\.[0-9]+)?/)) { exit 1 }
        v = substr(s, 1, RLENGTH); u = substr(s, RLENGTH + 1)
        m = 1
        if (u ~ /^k/) m = 1e3; else if (u ~ /^m/) m = 1e6; else if (u ~ /^g/) m = 1e9; else if (u ~ /^t/) m = 1e12
        sub(/^[kmgt]/, "", u)
        if (u == "bps") m *= 8; else if (u != "bit" && u != "") exit 1
        printf "%.0f\n", v * m
    }'
}

lab_rate() {
    local h=${1:?lab_rate HOST RATE [both|out|in]} rate=${2:?lab_rate HOST RATE [both|out|in]} dir=${3:-both}
    local port=lab-${h} bps burst
    if [ "$rate" = off ]; then
        case $dir in both | out) lab_exec "$h" tc qdisc del dev eth0 root 2>/dev/null || true ;; esac
        case $dir in both | in) tc qdisc del dev "$port" root 2>/dev/null || true ;; esac
        return 0
    fi
    bps=$(lab__rate_bps "$rate") || { lab__err "lab_rate: bad rate '$rate'"; return 1; }
    burst=$((bps / 8 / 500))
    [ "$burst" -lt 131072 ] && burst=131072
    case $dir in both | out)
        lab_exec "$h" tc qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 20ms || return 1 ;;
    esac
    case $dir in both | in)
        tc qdisc replace dev "$port" root tbf rate "$rate" burst "$burst" latency 20ms || return 1 ;;
    esac
}

lab_wire() {
    ip link set dev "lab-${1:?lab_wire HOST}" gso_max_segs 1
}

lab_gro() {
    local h=${1:?lab_gro HOST}
    ethtool -K "lab-$h" tso off >/dev/null || return 1
    lab_exec "$h" ethtool -K eth0 gro on >/dev/null
}

lab_segment() {
    lab_exec "${1:?lab_segment HOST}" ethtool -K eth0 tx-udp-segmentation off >/dev/null
}

# lab__loss_rule CALLER PCT MINLEN -> the nftables words that count and drop
# PCT% of UDP of at least MINLEN bytes ("" when PCT is 0)
lab__loss_rule() {
    local who=$1 pct=$2 min=$3 thr sized=
    thr=$(echo "$pct" | awk '/^[0-9]+(\.[0-9]+)?$/ && $1 <= 100 { printf "%d\n", $1 * 100 + 0.5; ok = 1 } END { exit !ok }') ||
        { lab__err "$who: bad percentage '$pct'"; return 1; }
    case $min in '' | *[!0-9]*) lab__err "$who: bad minimum length '$min'"; return 1 ;; esac
    [ "$thr" = 0 ] && return 0
    [ "$min" -gt 0 ] && sized="meta length >= $min"
    # numgen's values are 0..9999: at 100% there is nothing to draw
    local draw="numgen random mod 10000 < $thr counter"
    [ "$thr" -ge 10000 ] && draw=
    echo "meta l4proto udp $sized counter $draw drop"
}

lab_loss_port() {
    local h=${1:?lab_loss_port HOST PCT [MINLEN]} pct=${2:?lab_loss_port HOST PCT [MINLEN]} rule
    rule=$(lab__loss_rule lab_loss_port "$pct" "${3:-0}") || return 1
    nft delete table bridge "lab_loss_$h" 2>/dev/null || true
    [ -z "$rule" ] && return 0
    nft -f - <<EOF
table bridge lab_loss_$h {
    chain forward {
        type filter hook forward priority -10; policy accept;
        oifname "lab-$h" $rule
    }
}
EOF
}

lab_loss() {
    local h=${1:?lab_loss HOST PCT [MINLEN]} pct=${2:?lab_loss HOST PCT [MINLEN]} rule
    rule=$(lab__loss_rule lab_loss "$pct" "${3:-0}") || return 1
    lab_exec "$h" nft delete table inet lab_loss 2>/dev/null || true
    [ -z "$rule" ] && return 0
    lab_exec "$h" nft -f - <<EOF
table inet lab_loss {
    chain input {
        type filter hook input priority -10; policy accept;
        iifname != "lo" $rule
    }
}
EOF
}

lab_tap() {
    local t=lab-${1:?lab_tap NAME}
    lab__private_netns || { lab__err "lab_tap: not in a private network namespace; refusing"; return 1; }
    ip link show "$LAB_BRIDGE" >/dev/null 2>&1 || { lab__err "lab_tap: no bridge (lab_up first)"; return 1; }
    ip tuntap add dev "$t" mode tap || return 1
    ip link set "$t" master "$LAB_BRIDGE" up || return 1
    echo "$t" >>"$LAB_STATE/taps"
}

lab_track() {
    local p
    for p in "$@"; do echo "$p" >>"$LAB_STATE/pids"; done
}

lab_down() {
    local p h pids=()
    if [ -f "$LAB_STATE/pids" ]; then
        while read -r p; do
            [ -n "$p" ] && kill -0 "$p" 2>/dev/null && pids+=("$p")
        done <"$LAB_STATE/pids"
        [ ${#pids[@]} -gt 0 ] && lab_kill "${pids[@]}"
        : >"$LAB_STATE/pids"
    fi
    for h in $(lab_hosts); do
        ip link del "lab-$h" 2>/dev/null || true
        ip netns del "$h" 2>/dev/null || true
    done
    if [ -f "$LAB_STATE/taps" ]; then
        while read -r p; do
            [ -n "$p" ] && ip link del "$p" 2>/dev/null
        done <"$LAB_STATE/taps"
        rm -f "$LAB_STATE/taps"
    fi
    ip link del "$LAB_BRIDGE" 2>/dev/null || true
    rm -f "$LAB_STATE/exec_mode"
    return 0
}
