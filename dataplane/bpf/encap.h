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

LB_INLINE __u16 ipv4_csum(const struct iphdr *iph)
{
    const __u16 *w = (const __u16 *)iph;
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
        sum += w[i];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

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

    outer->version = 4;
    outer->ihl = 5;
    outer->tos = inner->tos;
    outer->tot_len = LB_HTONS(LB_NTOHS(inner->tot_len) + sizeof(struct iphdr));
    outer->id = 0;
    outer->frag_off = 0;
    outer->ttl = 64;
    outer->protocol = IPPROTO_IPIP;
    outer->check = 0;
    outer->saddr = src;
    outer->daddr = r->addr;
    outer->check = ipv4_csum(outer);
    return XDP_TX;
}
