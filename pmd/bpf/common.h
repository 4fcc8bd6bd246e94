// SPDX-License-Identifier: (MIT OR GPL-2.0)
// What vswitch's fast-path programs share: helpers by number, the legacy map definition, and
// the parse that decides whether a frame may take the fast path at all.
// No BTF: nothing here needs CO-RE.

#ifndef VSWITCH_FASTPATH_COMMON_H
#define VSWITCH_FASTPATH_COMMON_H

#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))
// Our loader links one section: every function is inlined into the program.
#define INLINE inline __attribute__((always_inline))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)BPF_FUNC_redirect_map;
static __u64 (*bpf_xdp_get_buff_len)(struct xdp_md *ctx) = (void *)BPF_FUNC_xdp_get_buff_len;
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;
static __s64 (*bpf_csum_diff)(__be32 *from, __u32 from_size, __be32 *to, __u32 to_size,
			      __u32 seed) = (void *)BPF_FUNC_csum_diff;

// The loader reads these by section and symbol name; their layout is the kernel's
// bpf_map_def as libbpf's legacy "maps" section had it.
struct map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
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

static INLINE __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static INLINE __u32 be16(const __u8 *p)
{
	return ((__u32)p[0] << 8) | p[1];
}

#define UNDERSTOOD 1
#define PARTIAL 2
#define CHUNK 512
#define MAX_CHUNKS 8

// Whether the fast path may forward the frame: IPv4 without options and not a fragment,
// carrying UDP, or TCP without SYN, FIN or RST (connection changes stay visible to the
// switch). PARTIAL: its TCP/UDP checksum was left to offload (the field holds the
// pseudo-header sum), to be finished here as the switch does. Anything else, ARP included,
// goes to the switch (0).
static INLINE int understood(const __u8 *data, const __u8 *end)
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
	// A total length shorter than the headers: the switch drops it as malformed.
	if (be16(ip + 2) < 20 + (ip[9] == 6 ? 20 : 8))
		return 0;
	l4_len = be16(ip + 2) - 20;
	if (ip[9] == 6) {
		if (l4[13] & 0x07)
			return 0;
		field = be16(l4 + 16);
	} else if (ip[9] == 17) {
		field = be16(l4 + 6);
		if (field == 0)
			return UNDERSTOOD;
	} else {
		return 0;
	}
	pseudo = be16(ip + 12) + be16(ip + 14) + be16(ip + 16) + be16(ip + 18) + ip[9] + l4_len;
	return field == fold(pseudo) ? PARTIAL : UNDERSTOOD;
}

// Finishes a checksum left to offload: the one's complement of the sum over the segment as
// it is (its checksum field holds the pseudo-header sum). Sums run in memory order, so the
// result is stored as is. A segment that already verifies (a complete checksum that happens
// to equal the pseudo-header sum) is left alone. 0 when the segment is not all in this
// buffer or longer than we sum here (then the switch does it).
#define TAIL(size)                                                            \
	if (rest & (size)) {                                                  \
		if (q + (size) > end)                                         \
			return 0;                                             \
		sum = bpf_csum_diff(0, 0, (__be32 *)q, (size), (__u32)sum);   \
		q += (size);                                                  \
	}

static INLINE int finish_partial(__u8 *data, __u8 *end)
{
	__u8 *ip = data + 14;
	__u8 *l4 = ip + 20;
	__u32 l4_len, off = 0, rest;
	__u8 *q;
	__u64 sum = 0, pseudo;
	__u16 *field;
	__u16 done;
	int i;

	if (l4 + 20 > end)
		return 0;
	l4_len = be16(ip + 2) - 20;
	if (l4_len > CHUNK * MAX_CHUNKS || l4 + l4_len > end)
		return 0;
	for (i = 0; i < MAX_CHUNKS; i++) {
		__u8 *p = l4 + off;

		if (l4_len - off < CHUNK)
			break;
		if (p + CHUNK > end)
			return 0;
		sum = bpf_csum_diff(0, 0, (__be32 *)p, CHUNK, (__u32)sum);
		off += CHUNK;
	}
	rest = (l4_len - off) & (CHUNK - 1);
	q = l4 + (off & (CHUNK * MAX_CHUNKS - 1));
	// The rest in power-of-two pieces: every size the verifier sees is a constant.
	TAIL(256);
	TAIL(128);
	TAIL(64);
	TAIL(32);
	TAIL(16);
	TAIL(8);
	TAIL(4);
	sum = (__u32)sum;
	if (rest & 2) {
		if (q + 2 > end)
			return 0;
		sum += *(__u16 *)q;
		q += 2;
	}
	if (rest & 1) {
		if (q + 1 > end)
			return 0;
		sum += q[0];
	}
	pseudo = (__u32)bpf_csum_diff(0, 0, (__be32 *)(ip + 12), 8, 0);
	pseudo += __builtin_bswap16((__u16)ip[9]) + __builtin_bswap16((__u16)l4_len);
	if (fold((__u32)(sum >> 32) + (__u32)sum + (__u32)fold((__u32)(pseudo >> 32) + (__u32)pseudo)) == 0xffff)
		return 1;
	done = ~fold((__u32)(sum >> 32) + (__u32)sum);
	if (ip[9] == 17) {
		if (done == 0)
			done = 0xffff;
		field = (__u16 *)(l4 + 6);
	} else {
		field = (__u16 *)(l4 + 16);
	}
	*field = done;
	return 1;
}

#endif
