#!/bin/sh
# Renders this node's vswitch config and CNI conflist (run by the DaemonSet's init container).
#
#   POD_CIDR       this node's pod CIDR (default: the Node object's spec.podCIDR, read from
#                  the API server with the pod's service account; needs NODE_NAME)
#   NODE_IP        the node address with its prefix, on the uplink (e.g. 198.18.0.1/24;
#                  default: the uplink interface's first IPv4 address, as the host has it)
#   NEXT_HOP       the default route's next hop on the uplink (default: the host's default
#                  route through the uplink interface)
#   UPLINK         the uplink interface the switch takes over (default eth1)
#   CLUSTER_CIDRS  comma-separated, never masqueraded (default 10.244.0.0/16,10.96.0.0/12)
#   OUT_DIR        where node.toml goes (default /etc/vswitch)
#   CNI_DIR        where 10-vswitch.conflist goes (default /host/etc/cni/net.d)
#   CTL            the control socket (default /run/vswitch/vswitch.sock)
#   FAST_PATH      xdp (default) or off: the XDP fast path. Pods come from vswitch-cni, which
#                  gives them GRO (the NAPI a redirect into a veth needs); turn it off where
#                  the uplink's driver cannot take XDP redirects
set -eu

UPLINK=${UPLINK:-eth1}
CLUSTER_CIDRS=${CLUSTER_CIDRS:-10.244.0.0/16,10.96.0.0/12}
OUT_DIR=${OUT_DIR:-/etc/vswitch}
CNI_DIR=${CNI_DIR:-/host/etc/cni/net.d}
CTL=${CTL:-/run/vswitch/vswitch.sock}
FAST_PATH=${FAST_PATH:-xdp}

fail() { echo "render-node-config: $*" >&2; exit 1; }

if [ -z "${POD_CIDR:-}" ]; then
	[ -n "${NODE_NAME:-}" ] || fail "set POD_CIDR, or NODE_NAME to read it from the Node"
	case "${KUBERNETES_SERVICE_HOST:-}" in
	'' | API_SERVER_ADDRESS)
		fail "set KUBERNETES_SERVICE_HOST in deploy/daemonset.yaml to the API server's address (without kube-proxy its cluster IP answers nobody on the host network)" ;;
	esac
	sa=/var/run/secrets/kubernetes.io/serviceaccount
	node=$(curl -sf --cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")" \
		"https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}/api/v1/nodes/${NODE_NAME}") ||
		fail "cannot read Node $NODE_NAME from the API server"
	POD_CIDR=$(printf '%s' "$node" | sed -n 's/.*"podCIDR": *"\([0-9./]*\)".*/\1/p' | head -n 1)
	[ -n "$POD_CIDR" ] || fail "Node $NODE_NAME has no spec.podCIDR (is the controller manager allocating node CIDRs?)"
fi
# Each node's own: read from the host's uplink interface unless given (the pod runs on the
# host's network).
if [ -z "${NODE_IP:-}" ]; then
	NODE_IP=$(ip -4 -o addr show dev "$UPLINK" 2>/dev/null | awk '{ print $4; exit }')
fi
[ -n "${NODE_IP:-}" ] || fail "set NODE_IP (the node address with its prefix on $UPLINK), or give $UPLINK its IPv4 address on the host"
if [ -z "${NEXT_HOP:-}" ]; then
	NEXT_HOP=$(ip -4 route show default dev "$UPLINK" 2>/dev/null | awk '{ print $3; exit }')
fi
[ -n "${NEXT_HOP:-}" ] || fail "set NEXT_HOP (the default route's next hop on $UPLINK), or give the host a default route through $UPLINK"

net=${POD_CIDR%/*}
len=${POD_CIDR#*/}
case "$net" in *.*.*.*) ;; *) fail "POD_CIDR $POD_CIDR is not an IPv4 prefix" ;; esac
case "$FAST_PATH" in xdp | off) ;; *) fail "FAST_PATH $FAST_PATH is not xdp or off" ;; esac
case "$len" in '' | *[!0-9]*) fail "POD_CIDR $POD_CIDR has no prefix length" ;; esac
# The gateway is the subnet's first address, as the bridge's is with host-local IPAM.
last=${net##*.}
gateway="${net%.*}.$((last + 1))"
cidrs=$(printf '%s' "$CLUSTER_CIDRS" | sed 's/[^,][^,]*/"&"/g; s/,/, /g')

mkdir -p "$OUT_DIR" "$CNI_DIR"
cat >"$OUT_DIR/node.toml.tmp" <<TOML
# Rendered by render-node-config.sh for ${NODE_NAME:-this node}.
[node]
xdp_mode = "auto"
fast_path = "$FAST_PATH"

[pods]
gateway = "$gateway/$len"

[uplink]
port = "$UPLINK"
address = "$NODE_IP"
next_hop = "$NEXT_HOP"
cluster_cidrs = [$cidrs]
TOML
mv "$OUT_DIR/node.toml.tmp" "$OUT_DIR/node.toml"

cat >"$CNI_DIR/10-vswitch.conflist.tmp" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "vswitch",
  "plugins": [
    {
      "type": "vswitch-cni",
      "ctl": "$CTL",
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$gateway" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
JSON
mv "$CNI_DIR/10-vswitch.conflist.tmp" "$CNI_DIR/10-vswitch.conflist"
echo "render-node-config: pod CIDR $POD_CIDR, gateway $gateway, uplink $UPLINK ($NODE_IP via $NEXT_HOP)"
