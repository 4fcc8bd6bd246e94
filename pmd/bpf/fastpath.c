// SPDX-License-Identifier: (MIT OR GPL-2.0)
// vswitch's per-port XDP program with the L2 flow cache (issue 10): a frame whose
// (ingress port, destination MAC, source MAC) the workers installed, and which the program fully
// understands (see `understood`; a checksum left to offload it finishes, as the switch does),
// is redirected to its egress port through a devmap;
// everything else goes to the port's AF_XDP socket, as without the cache.
// The workers are the only writers of the flow map; the program only counts and stamps hits.
// No BTF: legacy map definitions, helpers by number, nothing that needs CO-RE.

#include "common.h"

struct l2_key {
	__u32 ifindex;
	__u8 dst[6];
	__u8 src[6];
};

struct l2_flow {
	__u32 egress_port;
	__u32 reserved;
	__u64 packets;
	__u64 bytes;
	__u64 reserved2;
};

// Shared: the installed L2 flows; per CPU, so a hit counts without atomics.
struct map_def SEC("maps") l2_flows = {
	.type = BPF_MAP_TYPE_PERCPU_HASH,
	.key_size = sizeof(struct l2_key),
	.value_size = sizeof(struct l2_flow),
	.max_entries = 65536,
};

SEC("xdp")
int vswitch_fastpath(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct l2_key key = {};
	struct l2_flow *flow;
	__u64 l4_sum;
	int kind = understood(data, data_end);

	if (!kind)
		goto slow;
	key.ifindex = ctx->ingress_ifindex;
	__builtin_memcpy(key.dst, data, 6);
	__builtin_memcpy(key.src, data + 6, 6);
	flow = bpf_map_lookup_elem(&l2_flows, &key);
	if (!flow)
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
	if (bpf_redirect_map(&ports, flow->egress_port, 0) != XDP_REDIRECT)
		goto slow;
	// This CPU's copy: no other writer. The workers read the sums once a second.
	flow->packets += 1;
	flow->bytes += bpf_xdp_get_buff_len(ctx);
	return XDP_REDIRECT;
slow:
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Dual MIT/GPL";
