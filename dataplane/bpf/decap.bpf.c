/* decap.bpf.c: IPIP decapsulation for real servers of a `network = tunnel` service.
 *
 * The load balancer (encap.h) wraps each packet in an outer IPv4 header (protocol
 * 4) addressed to the real server. A real server normally strips it with the
 * kernel's ipip module; where that module is missing (this project's test kernel)
 * this program does the same job in XDP, before the stack sees the packet:
 *
 *   IPv4, protocol 4, outer destination in `endpoints`, outer IHL 5, not a
 *   fragment, a whole IPv4 header inside                    -> outer header removed,
 *                                                              Ethernet header moved
 *                                                              up, XDP_PASS (decapsulated)
 *   IPv6, next header 41 (IP6IP6), outer destination in
 *   `endpoints6`, a whole IPv6 header inside                -> the same for the 40-byte
 *                                                              outer header (no outer
 *                                                              extension headers)
 *   anything else                                           -> XDP_PASS untouched
 *
 * The inner packet keeps its addresses (client -> VIP), so the real server, which
 * holds the VIP on `lo`, answers the client directly. Not rendered from a template:
 * it has no configuration but the endpoint addresses, which live in a map. */

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define D_HTONS(x) ((__be16)__builtin_bswap16(x))
#else
#define D_HTONS(x) ((__be16)(x))
#endif
#define D_IP_MF_OFFSET 0x3fff

#define D_DECAPSULATED 0 /* outer header removed */
#define D_NOT_OURS 1     /* not IPIP to one of our endpoints: untouched */
#define D_MALFORMED 2    /* IPIP to us, but options, a fragment or a short inner header */
#define D_COUNTERS 4

BPF_HASH(endpoints, __be32, __u32, 64); /* outer destinations we decapsulate */
struct endpoint6 {
    __be32 addr[4];
};
BPF_HASH(endpoints6, struct endpoint6, __u32, 64); /* IPv6 outer destinations (IP6IP6) */
BPF_PERCPU_ARRAY(decap_stats, __u64, D_COUNTERS);

static inline __attribute__((always_inline)) int pass(__u32 slot)
{
    __u64 *c = decap_stats.lookup(&slot);
    if (c)
        *c += 1;
    return XDP_PASS;
}

/* strip `outer` bytes after the Ethernet header, which keeps its MACs and gets `proto` */
static inline __attribute__((always_inline)) int strip(struct xdp_md *ctx, int outer,
                                                       __be16 proto)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return pass(D_MALFORMED);
    struct ethhdr copy = *eth;
    if (bpf_xdp_adjust_head(ctx, outer))
        return pass(D_MALFORMED);
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_DROP; /* cannot happen: the inner header was there */
    __builtin_memcpy(eth->h_dest, copy.h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_source, copy.h_source, ETH_ALEN);
    eth->h_proto = proto;
    return pass(D_DECAPSULATED);
}

static inline __attribute__((always_inline)) int decap6(struct xdp_md *ctx, void *data,
                                                        void *data_end)
{
    struct ipv6hdr *outer = data + sizeof(struct ethhdr);
    if ((void *)(outer + 1) > data_end || outer->nexthdr != 41)
        return pass(D_NOT_OURS);
    struct endpoint6 ep;
    __builtin_memcpy(ep.addr, &outer->daddr, sizeof(ep.addr));
    if (!endpoints6.lookup(&ep))
        return pass(D_NOT_OURS);
    struct ipv6hdr *inner = (void *)(outer + 1);
    if (outer->version != 6 || (void *)(inner + 1) > data_end || inner->version != 6)
        return pass(D_MALFORMED);
    return strip(ctx, (int)sizeof(struct ipv6hdr), D_HTONS(ETH_P_IPV6));
}

int decap_ingress(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) <= data_end && eth->h_proto == D_HTONS(ETH_P_IPV6))
        return decap6(ctx, data, data_end);
    if ((void *)(eth + 1) > data_end || eth->h_proto != D_HTONS(ETH_P_IP))
        return pass(D_NOT_OURS);
    struct iphdr *outer = (void *)(eth + 1);
    if ((void *)(outer + 1) > data_end || outer->protocol != IPPROTO_IPIP)
        return pass(D_NOT_OURS);
    __be32 daddr = outer->daddr;
    if (!endpoints.lookup(&daddr))
        return pass(D_NOT_OURS);
    struct iphdr *inner = (void *)(outer + 1);
    if (outer->version != 4 || outer->ihl != 5 || (outer->frag_off & D_HTONS(D_IP_MF_OFFSET)) ||
        (void *)(inner + 1) > data_end || inner->version != 4)
        return pass(D_MALFORMED);
    return strip(ctx, (int)sizeof(struct iphdr), D_HTONS(ETH_P_IP));
}
