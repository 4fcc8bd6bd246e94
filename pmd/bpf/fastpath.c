// SPDX-License-Identifier: (MIT OR GPL-2.0)
// vswitch's per-port XDP program with the L2 flow cache (issue 10): a frame whose
// (ingress port, destination MAC, source MAC) the workers installed, and which the program fully
// understands (see `understood`), is redirected to its egress port through a devmap;
// everything else goes to the port's AF_XDP socket, as without the cache.
// The workers are the only writers of the flow map; the program only counts and stamps hits.
// No BTF: legacy map definitions, helpers by number, nothing that needs CO-RE.

#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)BPF_FUNC_redirect_map;
static __u64 (*bpf_xdp_get_buff_len)(struct xdp_md *ctx) = (void *)BPF_FUNC_xdp_get_buff_len;

// The loader reads these by section and symbol name; their layout is the kernel's
// bpf_map_def as libbpf's legacy "maps" section had it.
struct map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

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

// Per port: its queues' AF_XDP sockets (the loader gives each port's program its own map).
struct map_def SEC("maps") xsks = {
	.type = BPF_MAP_TYPE_XSKMAP,
	.key_size = 4,
	.value_size = 4,
	.max_entries = 64,
};

// Shared by every port's program: egress ports by the switch's port id (an array: no hashing).
struct map_def SEC("maps") ports = {
	.type = BPF_MAP_TYPE_DEVMAP,
	.key_size = 4,
	.value_size = 4,
	.max_entries = 256,
};

// Shared: the installed L2 flows; per CPU, so a hit counts without atomics.
struct map_def SEC("maps") l2_flows = {
	.type = BPF_MAP_TYPE_PERCPU_HASH,
	.key_size = sizeof(struct l2_key),
	.value_size = sizeof(struct l2_flow),
	.max_entries = 65536,
};

static __inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __inline __u32 be16(const __u8 *p)
{
	return ((__u32)p[0] << 8) | p[1];
}

// Whether the fast path may forward the frame: IPv4 without options and not a fragment,
// carrying UDP, or TCP without SYN, FIN or RST (connection changes stay visible to the
// switch), whose checksum is not left to offload (only the switch finishes those). Anything
// else, ARP included, goes to the switch.
static __inline int understood(const __u8 *data, const __u8 *end)
{
	const __u8 *ip = data + 14;
	const __u8 *l4 = ip + 20;
	__u32 field, pseudo, l4_len;

	if (l4 + 20 > end)
		return 0;
	if (data[12] != 0x08 || data[13] != 0x00 || ip[0] != 0x45)
		return 0;
	if ((be16(ip + 6) & 0x3fff) != 0)
		return 0;
	l4_len = be16(ip + 2) - 20;
	if (ip[9] == 6) {
		if (l4[13] & 0x07)
			return 0;
		field = be16(l4 + 16);
	} else if (ip[9] == 17) {
		field = be16(l4 + 6);
		if (field == 0)
			return 1;
	} else {
		return 0;
	}
	pseudo = be16(ip + 12) + be16(ip + 14) + be16(ip + 16) + be16(ip + 18) + ip[9] + l4_len;
	return field != fold(pseudo);
}

SEC("xdp")
int vswitch_fastpath(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct l2_key key = {};
	struct l2_flow *flow;

	if (!understood(data, data_end))
		goto slow;
	key.ifindex = ctx->ingress_ifindex;
	__builtin_memcpy(key.dst, data, 6);
	__builtin_memcpy(key.src, data + 6, 6);
	flow = bpf_map_lookup_elem(&l2_flows, &key);
	if (!flow)
		goto slow;
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
