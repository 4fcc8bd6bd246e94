// SPDX-License-Identifier: (MIT OR GPL-2.0)
// vswitch's per-port XDP program with the L2 flow cache (issue 10): a frame whose
// (ingress port, destination MAC, source MAC) the workers installed, and which the program fully
// understands (see `understood`; a checksum left to offload it finishes, as the switch does),
// is redirected to its egress port through a devmap;
// everything else goes to the port's AF_XDP socket, as without the cache.
// The workers are the only writers of the flow maps; the program only counts hits.
// No BTF: legacy map definitions, helpers by number, nothing that needs CO-RE.

#include "common.h"

struct l2_key {
	__u32 ifindex;
	__u8 dst[6];
	__u8 src[6];
};

// The key as the words the slot hash and the tag read (the same bytes).
union l2_words {
	struct l2_key key;
	__u32 w[4];
	__u64 d[2];
};

// The egress port and a tag of the key (front_tag) are read as one word: the map gives a
// deleted element to the next install at once, while this program on another CPU may still
// hold it; another key's tag there is a miss.
struct l2_flow {
	__u32 egress_port;
	__u32 tag;
	__u64 packets;
	__u64 bytes;
	__u64 reserved2;
};

// A flow in the front array: the key, and in one 8-byte word (written and read whole) the
// egress port with a tag of the key. The workers write a slot while this program may read
// it; a read that mixes two entries has key words of one and a route of another, which the
// tag turns into a miss.
struct l2_slot {
	union l2_words key;
	__u64 route;
	__u64 packets;
	__u64 bytes;
};

#define FRONT_BITS 12

// The longest frame each egress port takes (its MTU + 18, the kernel's devmap check), by the
// switch's port id: a longer frame would be dropped in the redirect, uncounted; the workers
// drop it and count it.
struct map_def SEC("maps") port_max_len = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = 4,
	.value_size = 4,
	.max_entries = 256,
};

// Installed flows, most of them: a direct-mapped array whose lookup the JIT inlines, at the
// slot `front_slot` computes. Per CPU, so a hit counts without atomics.
struct map_def SEC("maps") l2_front = {
	.type = BPF_MAP_TYPE_PERCPU_ARRAY,
	.key_size = 4,
	.value_size = sizeof(struct l2_slot),
	.max_entries = 1 << FRONT_BITS,
};

// Installed flows whose front slot another flow holds; hashing its key is what the front saves.
struct map_def SEC("maps") l2_flows = {
	.type = BPF_MAP_TYPE_PERCPU_HASH,
	.key_size = sizeof(struct l2_key),
	.value_size = sizeof(struct l2_flow),
	.max_entries = 65536,
};

// pmd's fastpath_front.rs computes these the same way, from the key's bytes read as
// two native (little-endian: common.h refuses others) 64-bit words: the ingress ifindex, then the frame's first 12 bytes (destination,
// source).
static INLINE __u32 front_slot(__u64 d0, __u64 d1)
{
	// One multiply: this is on the way to the slot's address; the tag below is not.
	return ((d0 ^ d1) * 0x9e3779b97f4a7c15ULL) >> (64 - FRONT_BITS);
}

// Never 0: an empty slot never matches. Independent of the slot hash, so keys that share a
// slot do not share a tag.
static INLINE __u32 front_tag(__u64 d0, __u64 d1)
{
	return (__u32)((d0 * 0xc2b2ae3d27d4eb4fULL + d1 * 0x165667b19e3779f9ULL) >> 32) | 1;
}

SEC("xdp")
int vswitch_fastpath(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	union l2_words key = {};
	struct l2_slot *slot;
	struct l2_flow *flow;
	__u64 *packets, *bytes;
	__u32 *max_len;
	__u32 index, egress, w0, w1, w2, w3;
	__u64 d0, d1, route;
	__u64 l4_sum;
	int kind = understood(data, data_end);

	if (!kind)
		goto slow;
	// The key in registers, loaded as words (the parse proved 54 bytes): built on the stack
	// byte by byte and read back as words, every read stalled on store forwarding.
	w0 = ctx->ingress_ifindex;
	w1 = *(__u32 *)data;
	w2 = *(__u32 *)(data + 4);
	w3 = *(__u32 *)(data + 8);
	d0 = w0 | ((__u64)w1 << 32);
	d1 = w2 | ((__u64)w3 << 32);
	index = front_slot(d0, d1);
	slot = bpf_map_lookup_elem(&l2_front, &index);
	if (!slot)
		goto slow;
	// Each word read once: what is compared is what is used.
	route = *(volatile __u64 *)&slot->route;
	egress = (__u32)route;
	if (*(volatile __u64 *)&slot->key.d[0] == d0 && *(volatile __u64 *)&slot->key.d[1] == d1 &&
	    (__u32)(route >> 32) == front_tag(d0, d1)) {
		packets = &slot->packets;
		bytes = &slot->bytes;
	} else {
		key.d[0] = d0;
		key.d[1] = d1;
		flow = bpf_map_lookup_elem(&l2_flows, &key.key);
		if (!flow)
			goto slow;
		route = *(volatile __u64 *)&flow->egress_port;
		if ((__u32)(route >> 32) != front_tag(d0, d1))
			goto slow;
		egress = (__u32)route;
		packets = &flow->packets;
		bytes = &flow->bytes;
	}
	max_len = bpf_map_lookup_elem(&port_max_len, &egress);
	if (!max_len || bpf_xdp_get_buff_len(ctx) > *max_len)
		goto slow;
	if (kind == PARTIAL) {
		if (!segment_sum(data + 14, data_end, &l4_sum))
			goto slow;
		FRESH(ctx, data, data_end);
		if (data + 54 > data_end)
			goto slow;
		finish_partial(data + 14, data_end, l4_sum);
	}
	// A missing egress port leaves the frame to the slow path, which knows why.
	if (bpf_redirect_map(&ports, egress, 0) != XDP_REDIRECT)
		goto slow;
	// This CPU's copy: no other writer but a worker rewriting the slot (install/remove), whose
	// fresh zeros an increment in flight can overwrite: a packet or a flow's count at most.
	// The workers read the sums once a second.
	*packets += 1;
	*bytes += bpf_xdp_get_buff_len(ctx);
	return XDP_REDIRECT;
slow:
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Dual MIT/GPL";
