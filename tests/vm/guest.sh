#!/bin/sh
# Runs as root inside the virtme-ng VM (the Debian kernel, this machine's root
# filesystem). Usage: guest.sh PYTHON REPORT.json SAMPLES_DIR
# Prepares what IPVS needs, then runs the checks in guest.py.
set -u
PY=$1 REPORT=$2 SAMPLES=$3
fail() { echo "guest setup failed: $*" >&2; printf '{"setup": {"ok": false, "detail": "%s"}}' "$*" > "$REPORT"; exit 1; }
for m in ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh ip_vs_sh \
         ip_vs_sed ip_vs_nq ip_vs_fo ip_vs_ovf ip_vs_mh; do
    modprobe "$m" || fail "modprobe $m"
done
# IPVS refuses destinations it cannot route ("address not unicast"): a dummy
# interface with a default route for both families
ip link add d0 type dummy && ip link set d0 up || fail "dummy d0"
ip addr add 198.18.255.254/15 dev d0 && ip route add default dev d0 || fail "ipv4 route"
ip -6 addr add 2001:db8:ffff::1/64 dev d0 nodad && ip -6 route add default dev d0 || fail "ipv6 route"
# the sync daemon needs its multicast interface to exist (samples use eth0, eth1)
for i in eth0 eth1; do
    ip link show "$i" >/dev/null 2>&1 || { ip link add "$i" type dummy && ip link set "$i" up; } || fail "dummy $i"
done
exec "$PY" "$(dirname "$0")/guest.py" "$REPORT" "$SAMPLES"
