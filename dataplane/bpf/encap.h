/* encap.h: sending the packet to the chosen real server.
 *   direct routing: destination MAC = the real server's, source MAC = ours; XDP_TX.
 *   tunnel: IPIP (protocol 4) around the original IP packet, outer source varied
 *   per flow in the configured bits (so the real server's NIC spreads flows over
 *   its queues), outer checksum computed here, Ethernet towards the next hop. */

LB_INLINE int forward_direct(void *data, void *data_end, const struct real *r)
{
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_DROP;
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, r->mac, ETH_ALEN);
    return XDP_TX;
}

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "forward_tunnel builds the outer header from little-endian 32-bit words"
#endif

LB_INLINE int forward_tunnel(struct xdp_md *ctx, const struct real *r, __u32 hash)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    if (data_end - data + sizeof(struct iphdr) > MAX_TUNNEL_FRAME)
        return verdict(G_DROP_TOO_BIG, XDP_DROP);

    __u32 zero = 0;
    struct lb_globals *g = globals.lookup(&zero);
    if (!g)
        return verdict(G_DROP_ENCAP, XDP_DROP);
    __be32 vary = g->tunnel_src_vary;
    __be32 src = (g->tunnel_src & ~vary) | (hash & vary);
    struct ethhdr *old = data;
    if ((void *)(old + 1) > data_end)
        return verdict(G_DROP_ENCAP, XDP_DROP);
    __u8 our_mac[ETH_ALEN];
    __builtin_memcpy(our_mac, old->h_dest, ETH_ALEN);

    if (bpf_xdp_adjust_head(ctx, 0 - (int)sizeof(struct iphdr)))
        return verdict(G_DROP_ENCAP, XDP_DROP);
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *outer = (void *)(eth + 1);
    struct iphdr *inner = (void *)(outer + 1);
    if ((void *)(inner + 1) > data_end)
        return verdict(G_DROP_ENCAP, XDP_DROP);

    __builtin_memcpy(eth->h_dest, r->mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, our_mac, ETH_ALEN);
    eth->h_proto = LB_HTONS(ETH_P_IP);

    /* the outer header in five 32-bit stores (little-endian words: byte 0 first), its
     * checksum summed from the values in registers, not read back from the packet */
    __be32 dst = r->addr;
    __u32 w0 = 0x45 | ((__u32)inner->tos << 8) |
               ((__u32)LB_HTONS(LB_NTOHS(inner->tot_len) + sizeof(struct iphdr)) << 16);
    __u32 w2 = 64 | (IPPROTO_IPIP << 8); /* ttl, protocol */
    __u32 sum = (w0 & 0xffff) + (w0 >> 16) + w2 + (src & 0xffff) + (src >> 16) +
                (dst & 0xffff) + (dst >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    __u32 *o = (__u32 *)outer;
    o[0] = w0;
    o[1] = 0; /* id 0, no fragment bits */
    o[2] = w2 | ((~sum & 0xffff) << 16);
    o[3] = src;
    o[4] = dst;
    return XDP_TX;
}
