// SPDX-License-Identifier: (MIT OR GPL-2.0)
// vswitch's per-port XDP program for the node gateway (issue 10): a frame of an established
// conntrack flow the workers installed — keyed by (ingress port, destination and source MAC,
// protocol, addresses, ports) — is rewritten as the switch would (new MACs, NAT addresses and
// ports, TTL) with checksums updated incrementally (RFC 1624, deltas the workers computed) and
// redirected to its egress port through a devmap. Flows into the overlay get the outer VXLAN
// headers in front; VXLAN from a peer whose inner frame is of an installed flow loses them.
// Everything else goes to the port's AF_XDP socket, as without the cache. The workers are the
// only writers of the maps; the program only counts and stamps hits.

#include "common.h"

// Outer Ethernet + IPv4 + UDP + VXLAN.
#define OUTER 50

struct tuple_key {
	__u32 ifindex;
	__u8 dst[6];
	__u8 src[6];
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	// 0: the frame as it came; INNER: the inner frame of VXLAN that came on the port.
	__u8 layer;
	__u8 pad[2];
} __attribute__((aligned(8)));

#define INNER 1

// What the program decides by: addresses, ports and deltas in network byte order, as they
// sit in the packet, between two copies of a tag of the key. The map gives a deleted element
// to the next install at once, written first word first, while this program on another CPU
// may still hold it: copied last word first (`route_of`), a copy with any word of another
// flow has that flow's tag in front.
struct tuple_route {
	__u32 tag;
	__u32 egress_port;
	// The longest IPv4 packet the egress port takes (its MTU; into the overlay, what is left
	// of the uplink's): longer ones go to the switch, which answers fragmentation-needed.
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
	// ENCAP, DECAP: the overlay_legs slot; ENCAP: the outer UDP source port.
	__u16 leg;
	__u16 udp_sport;
	__u32 tag_end;
} __attribute__((aligned(8)));

#define ROUTE_WORDS (sizeof(struct tuple_route) / 8)

struct tuple_flow {
	struct tuple_route route;
	__u64 packets;
	__u64 bytes;
	__u64 last_ns;
};

#define DECREMENT_TTL 1
#define ENCAP 2
#define DECAP 4

// ENCAP: the outer headers of an empty inner frame (IPv4 total length 36 and its checksum,
// UDP length 16, source port 0). DECAP: the outer headers a peer's VXLAN to us must have (our
// MAC, IPv4, the peer's and our address, our port, VXLAN's I flag and our VNI; other bytes
// are not compared).
struct overlay_leg {
	__u8 outer[OUTER];
	__u8 pad[2];
};

struct map_def SEC("maps") tuple_flows = {
	.type = BPF_MAP_TYPE_PERCPU_HASH,
	.key_size = sizeof(struct tuple_key),
	.value_size = sizeof(struct tuple_flow),
	.max_entries = 65536,
};

struct map_def SEC("maps") overlay_legs = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = 4,
	.value_size = sizeof(struct overlay_leg),
	.max_entries = 1024,
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

// The key of the frame at `eth` as it came (`layer` 0) or as the inner frame of VXLAN (INNER).
// Every field is stored as the words the map's hash reads them in: stored in smaller pieces,
// each such read would stall on store forwarding (see fastpath.c).
static INLINE void key_of(struct tuple_key *key, const __u8 *eth, __u8 layer)
{
	const __u8 *ip = eth + 14;
	const __u8 *l4 = ip + 20;

	// Key bytes 4..16 are the frame's first 12 (destination, source).
	*(__u32 *)key->dst = *(__u32 *)eth;
	*(__u32 *)(key->dst + 4) = *(__u32 *)(eth + 4);
	*(__u32 *)(key->src + 2) = *(__u32 *)(eth + 8);
	key->saddr = *(__u32 *)(ip + 12);
	key->daddr = *(__u32 *)(ip + 16);
	// Source and destination port; then protocol, layer and padding (little-endian).
	*(__u32 *)&key->sport = *(__u32 *)l4;
	*(__u32 *)&key->proto = ip[9] | ((__u32)layer << 8);
}

// The key's tag, as pmd's `tuple_tag` computes it from the key read as four native words.
static INLINE __u32 tuple_tag(const struct tuple_key *key)
{
	const __u64 *d = (const __u64 *)key;

	return (__u32)((d[0] * 0xc2b2ae3d27d4eb4fULL + d[1] * 0x165667b19e3779f9ULL +
			d[2] * 0x9e3779b97f4a7c15ULL + d[3] * 0xff51afd7ed558ccdULL) >> 32) | 1;
}

// Copies the flow's route into `r`, last word first; whether it is the key's whole.
static INLINE int route_of(struct tuple_flow *flow, struct tuple_route *r, __u32 tag)
{
	volatile __u64 *from = (volatile __u64 *)&flow->route;
	__u64 *to = (__u64 *)r;
	int i;

#pragma unroll
	for (i = ROUTE_WORDS - 1; i >= 0; i--)
		to[i] = from[i];
	return r->tag == tag && r->tag_end == tag;
}

// Whether the frame at `eth` (`room` bytes of the buffer from there on) is one the switch
// would decide as the flow says: TTL left (the switch sends time-exceeded), a header checksum
// that verifies, a total length the frame holds and the egress takes (else the switch drops
// it or sends fragmentation-needed).
static INLINE int takes(__u8 *eth, __u8 *end, struct tuple_route *flow, __u64 room)
{
	__u8 *ip = eth + 14;

	if (ip + 20 > end)
		return 0;
	if ((flow->flags & DECREMENT_TTL) && ip[8] <= 1)
		return 0;
	if (!header_verifies(ip))
		return 0;
	if (be16(ip + 2) > flow->max_len || 14 + be16(ip + 2) > room)
		return 0;
	return 1;
}

// Whether the outer UDP checksum of VXLAN to us verifies, given the sum of the inner frame's
// transport segment (as finished); its headers are summed here (50 bytes: UDP, VXLAN, inner
// Ethernet and IPv4). The datagram must hold nothing past the inner IPv4 packet.
static INLINE int outer_checksum_verifies(__u8 *ip, __u8 *end, __u64 inner_l4_sum)
{
	__u8 *udp = ip + 20;
	__u8 *in_ip = udp + 16 + 14;
	__u32 len;
	__u64 sum;

	if (in_ip + 20 > end)
		return 0;
	len = be16(udp + 4);
	if (len != 16 + 14 + be16(in_ip + 2))
		return 0;
	sum = (__u32)bpf_csum_diff(0, 0, (__be32 *)udp, 48, 0);
	sum += *(__u16 *)(udp + 48) + inner_l4_sum;
	return fold((__u32)fold64(sum) + fold64(pseudo_sum(ip, len))) == 0xffff;
}

// What the switch writes into a routed or translated frame: MACs, TTL, addresses, ports.
static INLINE void rewrite(__u8 *eth, __u8 *end, struct tuple_route *flow)
{
	__u8 *ip = eth + 14;
	__u8 *l4 = ip + 20;
	__u16 *check;

	if (l4 + 20 > end)
		return;
	__builtin_memcpy(eth, flow->new_dst, 6);
	__builtin_memcpy(eth + 6, flow->new_src, 6);
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
}

// This CPU's copy: no other writer. The workers read the sums once a second.
static INLINE int counted(struct tuple_flow *flow, __u64 len)
{
	flow->packets += 1;
	flow->bytes += len;
	// The coarse clock (jiffies resolution) is enough to say when a flow was last used.
	flow->last_ns = bpf_ktime_get_coarse_ns();
	return XDP_REDIRECT;
}

static INLINE int to_socket(struct xdp_md *ctx)
{
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

// A frame of a flow into the overlay: rewritten as routed, then the leg's outer headers go in
// front with the lengths, the IPv4 checksum (RFC 1624 from the template's) and the flow's UDP
// source port filled in, as the switch's `encap::push_outer` writes them.
static INLINE int encapsulate(struct xdp_md *ctx, struct tuple_flow *counts,
			      struct tuple_route *flow, __u64 len)
{
	__u32 slot = flow->leg;
	struct overlay_leg *leg = bpf_map_lookup_elem(&overlay_legs, &slot);
	__u8 *data, *end, *ip, *udp;
	__u32 old_total, total;

	if (!leg)
		return to_socket(ctx);
	if (bpf_xdp_adjust_head(ctx, -OUTER))
		return to_socket(ctx);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + OUTER + 54 > end ||
	    bpf_redirect_map(&ports, flow->egress_port, 0) != XDP_REDIRECT) {
		bpf_xdp_adjust_head(ctx, OUTER);
		return to_socket(ctx);
	}
	rewrite(data + OUTER, end, flow);
	__builtin_memcpy(data, leg->outer, OUTER);
	ip = data + 14;
	udp = ip + 20;
	old_total = be16(ip + 2);
	total = old_total + len;
	*(__u16 *)(ip + 2) = __builtin_bswap16((__u16)total);
	*(__u16 *)(ip + 10) = __builtin_bswap16(
		(__u16)~fold((__u32)(__u16)~be16(ip + 10) + (__u16)~old_total + (__u16)total));
	*(__u16 *)udp = flow->udp_sport;
	*(__u16 *)(udp + 4) = __builtin_bswap16((__u16)(be16(udp + 4) + len));
	return counted(counts, len);
}

// VXLAN to us (the outer frame IPv4 without options, UDP, not a fragment: `understood`) whose
// inner frame is of an installed flow: its outer headers are checked as the switch checks them
// (to our MAC, from the peer, to our address and port, the I flag and our VNI, lengths that
// agree, a UDP checksum that verifies if there is one, summed after the inner checksum was
// finished as the switch does: a kernel peer's local checksum offload computed it so; one
// left to offload is finished by the switch, so it passes), stripped, and the inner frame
// goes on as routed.
static INLINE int decapsulate(struct xdp_md *ctx, struct tuple_key *key)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	__u8 *ip = data + 14;
	__u8 *udp = ip + 20;
	__u8 *vx = udp + 8;
	__u8 *in = vx + 8;
	struct tuple_flow *counts;
	struct tuple_route r, *flow = &r;
	struct overlay_leg *leg;
	__u32 slot;
	__u64 len, l4_sum = 0;
	int kind, checked;

	if (in + 54 > end || ip[9] != 17 || !(vx[0] & 0x08))
		return to_socket(ctx);
	kind = understood(in, end);
	if (!kind)
		return to_socket(ctx);
	key_of(key, in, INNER);
	counts = bpf_map_lookup_elem(&tuple_flows, key);
	if (!counts || !route_of(counts, flow, tuple_tag(key)) || !(flow->flags & DECAP))
		return to_socket(ctx);
	slot = flow->leg;
	leg = bpf_map_lookup_elem(&overlay_legs, &slot);
	if (!leg)
		return to_socket(ctx);
	if (*(__u32 *)data != *(__u32 *)leg->outer ||
	    *(__u16 *)(data + 4) != *(__u16 *)(leg->outer + 4) ||
	    *(__u32 *)(ip + 12) != *(__u32 *)(leg->outer + 26) ||
	    *(__u32 *)(ip + 16) != *(__u32 *)(leg->outer + 30) ||
	    *(__u16 *)(udp + 2) != *(__u16 *)(leg->outer + 36) ||
	    vx[4] != leg->outer[46] || vx[5] != leg->outer[47] || vx[6] != leg->outer[48])
		return to_socket(ctx);
	len = bpf_xdp_get_buff_len(ctx);
	if (!header_verifies(ip) || 14 + be16(ip + 2) != len || be16(udp + 4) + 20 != be16(ip + 2))
		return to_socket(ctx);
	if (!takes(in, end, flow, len - OUTER))
		return to_socket(ctx);
	// The inner checksum is finished first (the switch does the same), and its sum is what
	// the outer checksum covers of the inner segment: one pass over it either way.
	// None, or left to offload (the pseudo-header sum only: the switch finishes it, so it
	// verifies) need no summing.
	checked = *(__u16 *)(udp + 6) != 0 &&
		  *(__u16 *)(udp + 6) != fold64(pseudo_sum(ip, be16(udp + 4)));
	if ((kind == PARTIAL || checked) && !segment_sum(in + 14, end, &l4_sum))
		return to_socket(ctx);
	FRESH(ctx, data, end);
	ip = data + 14;
	in = data + OUTER;
	if (in + 54 > end)
		return to_socket(ctx);
	if (kind == PARTIAL)
		l4_sum = finish_partial(in + 14, end, l4_sum);
	if (checked && !outer_checksum_verifies(ip, end, l4_sum))
		return to_socket(ctx);
	if (bpf_xdp_adjust_head(ctx, OUTER))
		return to_socket(ctx);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + 54 > end || bpf_redirect_map(&ports, flow->egress_port, 0) != XDP_REDIRECT) {
		bpf_xdp_adjust_head(ctx, -OUTER);
		return to_socket(ctx);
	}
	rewrite(data, end, flow);
	return counted(counts, len);
}

SEC("xdp")
int vswitch_fastpath_tuple(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *data_end = (void *)(long)ctx->data_end;
	struct tuple_key key = {};
	struct tuple_flow *counts;
	struct tuple_route r, *flow = &r;
	__u64 len, l4_sum;
	int kind = understood(data, data_end);

	if (!kind || data + 54 > data_end)
		return to_socket(ctx);
	key.ifindex = ctx->ingress_ifindex;
	key_of(&key, data, 0);
	counts = bpf_map_lookup_elem(&tuple_flows, &key);
	if (!counts)
		return decapsulate(ctx, &key);
	if (!route_of(counts, flow, tuple_tag(&key)))
		return to_socket(ctx);
	len = bpf_xdp_get_buff_len(ctx);
	if (!takes(data, data_end, flow, len))
		return to_socket(ctx);
	if (kind == PARTIAL && !segment_sum(data + 14, data_end, &l4_sum))
		return to_socket(ctx);
	FRESH(ctx, data, data_end);
	if (data + 54 > data_end)
		return to_socket(ctx);
	if (kind == PARTIAL)
		finish_partial(data + 14, data_end, l4_sum);
	if (flow->flags & ENCAP)
		return encapsulate(ctx, counts, flow, len);
	// A missing egress port leaves the frame to the slow path, which knows why; the frame
	// is rewritten only once it is sure to leave here.
	if (bpf_redirect_map(&ports, flow->egress_port, 0) != XDP_REDIRECT)
		return to_socket(ctx);
	rewrite(data, data_end, flow);
	return counted(counts, len);
}

char _license[] SEC("license") = "Dual MIT/GPL";
