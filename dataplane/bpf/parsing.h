/* parsing.h: Ethernet/IPv4/TCP/UDP parsing with bounds checks, and the defined
 * answer for every packet that is not a clean IPv4 TCP/UDP packet to a VIP:
 *   not IPv4 (ARP, IPv6, VLAN-tagged, truncated Ethernet)  -> XDP_PASS
 *     (IPv6 -> IPV6_PACKET when the build has feature ipv6: ipv6.h decides)
 *   IPv4 header truncated, version != 4, IHL < 5, total
 *   length beyond the frame                                  -> XDP_PASS (the stack drops it)
 *   neither TCP nor UDP (ICMP, ...)                          -> XDP_PASS
 *   not to a VIP's address, protocol and port                -> XDP_PASS
 *   to a VIP: fragment, IP options, truncated/invalid L4     -> XDP_DROP
 * Nothing malformed is ever forwarded. The clean path does no map lookup here: a
 * packet is known to be for a VIP by its conntrack entry or its service lookup;
 * the `vips` map is consulted only for the odd packets above, to choose between
 * "not ours, pass" and "ours but malformed, drop". */

LB_INLINE void count(__u32 slot)
{
    __u64 *c = global_stats.lookup(&slot);
    if (c)
        *c += 1;
}

LB_INLINE int verdict(__u32 slot, int action)
{
    count(slot);
    return action;
}

/* an odd packet: dropped (counted in `slot`) if it is addressed to a VIP, else passed */
LB_INLINE int odd_packet(const struct iphdr *iph, __u32 slot)
{
    struct vip_key vk = {.vip = iph->daddr, .proto = iph->protocol};
    if (!vips.lookup(&vk))
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    return verdict(slot, XDP_DROP);
}

LB_INLINE int parse_packet(void *data, void *data_end, struct packet *p)
{
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return verdict(G_PASS_NOT_IPV4, XDP_PASS);
    if (eth->h_proto != LB_HTONS(ETH_P_IP)) {
        if (feature_ipv6() && eth->h_proto == LB_HTONS(ETH_P_IPV6))
            return IPV6_PACKET; /* lb_ingress6 (ipv6.h) parses it */
        return verdict(G_PASS_NOT_IPV4, XDP_PASS);
    }

    struct iphdr *iph = (void *)(eth + 1);
    if ((void *)(iph + 1) > data_end)
        return verdict(G_PASS_BAD_IPV4, XDP_PASS);
    if (iph->version != 4 || iph->ihl < 5)
        return verdict(G_PASS_BAD_IPV4, XDP_PASS);
    __u32 tot_len = LB_NTOHS(iph->tot_len);
    if (tot_len < (__u32)iph->ihl * 4 || (void *)iph + tot_len > data_end)
        return verdict(G_PASS_BAD_IPV4, XDP_PASS);
    if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP) {
        if (feature_nat() && iph->protocol == IPPROTO_ICMP)
            return NAT_ICMP; /* nat.h decides */
        return verdict(G_PASS_NOT_VIP, XDP_PASS); /* VIPs are TCP and UDP services */
    }

    if (iph->frag_off & LB_HTONS(IP_MF | IP_OFFSET))
        return odd_packet(iph, G_DROP_FRAGMENT);
    if (iph->ihl != 5)
        return odd_packet(iph, G_DROP_IP_OPTIONS);

    p->flow.saddr = iph->saddr;
    p->flow.daddr = iph->daddr;
    p->flow.proto = iph->protocol;
    p->len = data_end - data;
    if (iph->protocol == IPPROTO_TCP) {
        struct tcphdr *th = (void *)(iph + 1);
        if ((void *)(th + 1) > data_end || th->doff < 5)
            return odd_packet(iph, G_DROP_BAD_L4);
        p->flow.sport = th->source;
        p->flow.dport = th->dest;
        p->tcp_flags = ((__u8 *)th)[13];
    } else {
        struct udphdr *uh = (void *)(iph + 1);
        if ((void *)(uh + 1) > data_end)
            return odd_packet(iph, G_DROP_BAD_L4);
        p->flow.sport = uh->source;
        p->flow.dport = uh->dest;
    }
    return FURTHER_PROCESSING;
}

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

LB_INLINE bool is_syn(const struct packet *p)
{
    return p->flow.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
}

LB_INLINE bool is_rst(const struct packet *p)
{
    return p->flow.proto == IPPROTO_TCP && (p->tcp_flags & TCP_RST);
}
