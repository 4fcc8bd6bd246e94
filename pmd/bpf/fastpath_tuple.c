// SPDX-License-Identifier: (MIT OR GPL-2.0)
// vswitch's per-port XDP program for the node gateway (issue 10): a frame of an established
// conntrack flow the workers installed — keyed by (ingress port, destination and source MAC,
// protocol, addresses, ports) — is rewritten as the switch would (new MACs, NAT addresses and
// ports, TTL) with checksums updated incrementally (RFC 1624, deltas the workers computed) and
// redirected to its egress port through a devmap. Everything else goes to the port's AF_XDP
// socket, as without the cache. The workers are the only writers of the flow map; the program
// only counts and stamps hits.

#include "common.h"

struct tuple_key {
	__u32 ifindex;
	__u8 dst[6];
	__u8 src[6];
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

// Addresses, ports and deltas in network byte order, as they sit in the packet.
struct tuple_flow {
	__u32 egress_port;
	// The longest IPv4 packet the egress port takes (its MTU): longer ones go to the switch,
	// which answers fragmentation-needed.
	__u16 max_len;
	__u8 flags;
	__u8 pad;
	__u8 new_dst[6];
	__u8 new_src[6];
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	// One's complement sums of (~old + new) over what changes, for the IPv4 header and for
	// the transport checksum (its pseudo-header included).
	__u16 ip_delta;
	__u16 l4_delta;
	__u32 pad2;
	__u64 packets;
	__u64 bytes;
	__u64 last_ns;
};

#define DECREMENT_TTL 1

struct map_def SEC("maps") tuple_flows = {
	.type = BPF_MAP_TYPE_PERCPU_HASH,
	.key_size = sizeof(struct tuple_key),
	.value_size = sizeof(struct tuple_flow),
	.max_entries = 65536,
};

// Whether an option-less IPv4 header's checksum verifies (inline: cheaper than a helper).
static INLINE int header_verifies(const __u8 *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
	int i;

#pragma unroll
	for (i = 0; i < 10; i++)
		sum += w[i];
	return fold(sum) == 0xffff;
}

// RFC 1624, eqn. 3: HC' = ~(~HC + delta), delta = sum of ~m + m'.
static INLINE __u16 adjusted(__u16 check, __u16 delta)
{
	return ~fold((__u32)(__u16)~check + delta);
}

SEC("xdp")
int vswitch_fastpath_tuple(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *data_end = (void *)(long)ctx->data_end;
	__u8 *ip = data + 14;
	__u8 *l4 = ip + 20;
	struct tuple_key key = {};
	struct tuple_flow *flow;
	__u16 *check;
	__u64 len;
	int kind = understood(data, data_end);

	if (!kind || l4 + 20 > data_end)
		goto slow;
	key.ifindex = ctx->ingress_ifindex;
	__builtin_memcpy(key.dst, data, 6);
	__builtin_memcpy(key.src, data + 6, 6);
	key.saddr = *(__u32 *)(ip + 12);
	key.daddr = *(__u32 *)(ip + 16);
	key.sport = *(__u16 *)l4;
	key.dport = *(__u16 *)(l4 + 2);
	key.proto = ip[9];
	flow = bpf_map_lookup_elem(&tuple_flows, &key);
	if (!flow)
		goto slow;
	// The switch sends time-exceeded and fragmentation-needed.
	if ((flow->flags & DECREMENT_TTL) && ip[8] <= 1)
		goto slow;
	// What the switch would drop: a header checksum that does not verify, a total length
	// the frame does not hold.
	if (!header_verifies(ip))
		goto slow;
	len = bpf_xdp_get_buff_len(ctx);
	if (be16(ip + 2) > flow->max_len || 14 + be16(ip + 2) > len)
		goto slow;
	if (kind == PARTIAL && !finish_partial(data, data_end))
		goto slow;
	// A missing egress port leaves the frame to the slow path, which knows why; the frame
	// is rewritten only once it is sure to leave here.
	if (bpf_redirect_map(&ports, flow->egress_port, 0) != XDP_REDIRECT)
		goto slow;
	__builtin_memcpy(data, flow->new_dst, 6);
	__builtin_memcpy(data + 6, flow->new_src, 6);
	if (flow->flags & DECREMENT_TTL)
		ip[8] -= 1;
	check = (__u16 *)(ip + 10);
	*check = adjusted(*check, flow->ip_delta);
	*(__u32 *)(ip + 12) = flow->saddr;
	*(__u32 *)(ip + 16) = flow->daddr;
	check = (__u16 *)(ip[9] == 6 ? l4 + 16 : l4 + 6);
	// A UDP checksum of 0 means none: it stays none.
	if (ip[9] == 6 || *check != 0) {
		*check = adjusted(*check, flow->l4_delta);
		if (ip[9] == 17 && *check == 0)
			*check = 0xffff;
	}
	*(__u16 *)l4 = flow->sport;
	*(__u16 *)(l4 + 2) = flow->dport;
	// This CPU's copy: no other writer. The workers read the sums once a second.
	flow->packets += 1;
	flow->bytes += len;
	// The coarse clock (jiffies resolution) is enough to say when a flow was last used.
	flow->last_ns = bpf_ktime_get_coarse_ns();
	return XDP_REDIRECT;
slow:
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Dual MIT/GPL";
