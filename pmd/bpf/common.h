// SPDX-License-Identifier: (MIT OR GPL-2.0)
// What vswitch's fast-path programs share: helpers by number, the legacy map definition, and
// the parse that decides whether a frame may take the fast path at all.
// No BTF: nothing here needs CO-RE.

#ifndef VSWITCH_FASTPATH_COMMON_H
#define VSWITCH_FASTPATH_COMMON_H

#include <linux/bpf.h>

// Fields are read as words and compared in memory order with little-endian constants.
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vswitch's fast path assumes a little-endian BPF target"
#endif

#define SEC(name) __attribute__((section(name), used))
// Our loader links one section: every function is inlined into the program.
#define INLINE inline __attribute__((always_inline))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)BPF_FUNC_redirect_map;
static __u64 (*bpf_xdp_get_buff_len)(struct xdp_md *ctx) = (void *)BPF_FUNC_xdp_get_buff_len;
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;
static long (*bpf_xdp_adjust_head)(struct xdp_md *ctx, int delta) = (void *)BPF_FUNC_xdp_adjust_head;
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

// The sum of the IPv4 pseudo-header of a `len`-byte transport segment, in memory order and
// not folded (the one's complement sum does not depend on byte order). Inline word reads: it
// runs for every frame (`understood`).
static INLINE __u64 pseudo_sum(const __u8 *ip, __u32 len)
{
	return (__u32)*(__u16 *)(ip + 12) + *(__u16 *)(ip + 14) + *(__u16 *)(ip + 16) +
	       *(__u16 *)(ip + 18) + __builtin_bswap16((__u16)ip[9]) +
	       __builtin_bswap16((__u16)len);
}

// Whether the fast path may forward the frame: IPv4 without options and not a fragment,
// carrying UDP, or TCP without SYN, FIN or RST (connection changes stay visible to the
// switch). PARTIAL: its TCP/UDP checksum was left to offload (the field holds the
// pseudo-header sum), to be finished here as the switch does. Anything else, ARP included,
// goes to the switch (0). Fields are read as words and summed in memory order (the one's
// complement sum does not depend on byte order): this runs for every frame.
static INLINE int understood(const __u8 *data, const __u8 *end)
{
	const __u8 *ip = data + 14;
	const __u8 *l4 = ip + 20;
	__u32 total;
	__u16 field;

	if (l4 + 20 > end)
		return 0;
	if (*(__u16 *)(data + 12) != __builtin_bswap16(0x0800) || ip[0] != 0x45)
		return 0;
	if (*(__u16 *)(ip + 6) & __builtin_bswap16(0x3fff))
		return 0;
	total = __builtin_bswap16(*(__u16 *)(ip + 2));
	// A total length shorter than the headers: the switch drops it as malformed.
	if (total < 20 + (ip[9] == 6 ? 20 : 8))
		return 0;
	if (ip[9] == 6) {
		if (l4[13] & 0x07)
			return 0;
		field = *(__u16 *)(l4 + 16);
	} else if (ip[9] == 17) {
		field = *(__u16 *)(l4 + 6);
		if (field == 0)
			return UNDERSTOOD;
	} else {
		return 0;
	}
	return field == fold((__u32)pseudo_sum(ip, total - 20)) ? PARTIAL : UNDERSTOOD;
}

// The one's complement sum, in memory order and not folded, of the `len` bytes at `p`, into
// `out`; 0 when they are not all in this buffer or more than we sum here. The verifier walks
// it once per length (each ends with another packet range proven): callers take fresh packet
// pointers from the context afterwards (`FRESH`), so those paths end in one state and the
// rest of the program is verified once, not once per length.
#define TAIL(size)                                                            \
	if (rest & (size)) {                                                  \
		if (q + (size) > end)                                         \
			return 0;                                             \
		sum = bpf_csum_diff(0, 0, (__be32 *)q, (size), (__u32)sum);   \
		q += (size);                                                  \
	}

static INLINE int sum_bytes(__u8 *p, __u32 len, __u8 *end, __u64 *out)
{
	__u32 off = 0, rest;
	__u8 *q;
	__u64 sum = 0;
	int i;

	if (len > CHUNK * MAX_CHUNKS || p + len > end)
		return 0;
	for (i = 0; i < MAX_CHUNKS; i++) {
		__u8 *c = p + off;

		if (len - off < CHUNK)
			break;
		if (c + CHUNK > end)
			return 0;
		sum = bpf_csum_diff(0, 0, (__be32 *)c, CHUNK, (__u32)sum);
		off += CHUNK;
	}
	rest = (len - off) & (CHUNK - 1);
	q = p + (off & (CHUNK * MAX_CHUNKS - 1));
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
	*out = sum;
	return 1;
}

#define FRESH(ctx, data, end)                                          \
	do {                                                           \
		data = (void *)(long)(ctx)->data;                      \
		end = (void *)(long)(ctx)->data_end;                   \
	} while (0)

static INLINE __u16 fold64(__u64 sum)
{
	// Twice: the first addition may carry into bit 32.
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return fold((__u32)sum);
}

// The sum of the transport segment of the option-less IPv4 packet at `ip`, into `out`; 0 when
// it is not all in this buffer or longer than we sum (then the switch finishes it).
static INLINE int segment_sum(__u8 *ip, __u8 *end, __u64 *out)
{
	if (ip + 20 > end)
		return 0;
	return sum_bytes(ip + 20, be16(ip + 2) - 20, end, out);
}

// Finishes a checksum left to offload (the field holds the pseudo-header sum), given the sum
// of the segment as it is (`segment_sum`): the one's complement of that sum. Sums run in memory
// order, so the result is stored as is. A segment that already verifies (a complete checksum
// that happens to equal the pseudo-header sum) is left alone. Returns the sum of the segment
// as it is left.
static INLINE __u64 finish_partial(__u8 *ip, __u8 *end, __u64 sum)
{
	__u8 *l4 = ip + 20;
	__u16 *field;
	__u16 done;
	__u64 finished;

	if (l4 + 20 > end)
		return sum;
	if (fold((__u32)fold64(sum) + fold64(pseudo_sum(ip, be16(ip + 2) - 20))) == 0xffff)
		return sum;
	done = ~fold64(sum);
	if (ip[9] == 17) {
		if (done == 0)
			done = 0xffff;
		field = (__u16 *)(l4 + 6);
	} else {
		field = (__u16 *)(l4 + 16);
	}
	finished = sum + (__u16)~*field + done;
	*field = done;
	return finished;
}

#endif
