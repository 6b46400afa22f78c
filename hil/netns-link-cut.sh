#!/usr/bin/env bash
# netns-link-cut.sh: a summit-base link made of two network namespaces joined by a veth pair,
# which can be cut and restored at the link layer (issue 3 item 9, netns part).
#
# Usage (as root):
#   hil/netns-link-cut.sh setup    <id>   create namespaces summit-test-<id> and base-test-<id>,
#                                         joined by veth vs-<id> (summit) <-> vb-<id> (base)
#   hil/netns-link-cut.sh cut      <id>   ip link set vs-<id> down (both ends lose carrier)
#   hil/netns-link-cut.sh restore  <id>   ip link set vs-<id> up
#   hil/netns-link-cut.sh status   <id>   print namespaces, link state and addresses
#   hil/netns-link-cut.sh teardown <id>   delete both namespaces (and with them the veth pair)
#
# <id> is 1 to 10 characters of [a-z0-9] (veth names must fit in 15 characters).
# Addresses exist INSIDE the namespaces only, never in the host namespace:
#   summit-test-<id>: vs-<id> 10.231.0.1/30      base-test-<id>: vb-<id> 10.231.0.2/30
# Run a program on one side with: ip netns exec summit-test-<id> <command>
# The host's own interfaces, routes and firewall are never touched. `teardown` is idempotent;
# a failed `setup` tears down whatever it created.
set -euo pipefail

readonly SUMMIT_ADDRESS=10.231.0.1/30
readonly BASE_ADDRESS=10.231.0.2/30

usage() {
    echo "usage: $0 setup|cut|restore|status|teardown <id>   (id: 1-10 chars of [a-z0-9])" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
readonly action=$1 id=$2
[[ $id =~ ^[a-z0-9]{1,10}$ ]] || { echo "error: bad id '$id': use 1-10 chars of [a-z0-9]" >&2; exit 2; }

if [[ $(id -u) -ne 0 ]]; then
    echo "error: $0 must run as root (it creates network namespaces and veth links); try sudo" >&2
    exit 1
fi
command -v ip >/dev/null || { echo "error: 'ip' (iproute2) not found" >&2; exit 1; }

readonly summit=summit-test-$id base=base-test-$id veth_summit=vs-$id veth_base=vb-$id

namespace_exists() {
    ip netns list | awk '{print $1}' | grep -qx -- "$1"
}

teardown() {
    local namespace
    for namespace in "$summit" "$base"; do
        if namespace_exists "$namespace"; then
            ip netns del "$namespace"
        fi
    done
}

setup() {
    if namespace_exists "$summit" || namespace_exists "$base"; then
        echo "error: namespace $summit or $base already exists; run: $0 teardown $id" >&2
        exit 1
    fi
    trap 'echo "error: setup failed; tearing down" >&2; teardown' ERR
    ip netns add "$summit"
    ip netns add "$base"
    ip -n "$summit" link add "$veth_summit" type veth peer name "$veth_base" netns "$base"
    ip -n "$summit" addr add "$SUMMIT_ADDRESS" dev "$veth_summit"
    ip -n "$base" addr add "$BASE_ADDRESS" dev "$veth_base"
    ip -n "$summit" link set lo up
    ip -n "$base" link set lo up
    ip -n "$summit" link set "$veth_summit" up
    ip -n "$base" link set "$veth_base" up
    trap - ERR
    echo "ok setup $summit ($SUMMIT_ADDRESS on $veth_summit) <-> $base ($BASE_ADDRESS on $veth_base)"
}

require_setup() {
    namespace_exists "$summit" || { echo "error: $summit does not exist; run: $0 setup $id" >&2; exit 1; }
}

case $action in
    setup) setup ;;
    cut)
        require_setup
        ip -n "$summit" link set "$veth_summit" down
        echo "ok cut $veth_summit down"
        ;;
    restore)
        require_setup
        ip -n "$summit" link set "$veth_summit" up
        echo "ok restore $veth_summit up"
        ;;
    status)
        for namespace in "$summit" "$base"; do
            if namespace_exists "$namespace"; then
                echo "== $namespace"
                ip -n "$namespace" -brief addr show
            else
                echo "== $namespace: absent"
            fi
        done
        ;;
    teardown)
        teardown
        echo "ok teardown $summit $base"
        ;;
    *) usage ;;
esac
