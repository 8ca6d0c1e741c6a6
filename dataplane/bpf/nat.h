/* nat.h: network = nat (piranha's default), both directions.
 *   inbound (public side, lb_ingress): VIP:vport -> RIP:rport, Ethernet towards the
 *     real server from the private interface's MAC, bpf_redirect_map to
 *     tx_ports[NAT_TX_PRIVATE]; the flow's conntrack entry learns the client side's
 *     MAC and gets a reverse entry (nat_rev) keyed by the reply's 5-tuple.
 *   return (private side, lb_nat_return): a reply matching nat_rev whose conntrack
 *     entry is alive and still on that real server -> RIP:rport becomes VIP:vport,
 *     Ethernet towards the learned MAC, redirect to tx_ports[NAT_TX_PUBLIC]; anything
 *     else (ARP, the director's own traffic, unknown or expired flows) -> XDP_PASS.
 * Checksums are updated incrementally (RFC 1624): the IPv4 header's, and TCP/UDP's
 * over the pseudo header and the port; a UDP checksum of 0 (none) stays 0.
 * One entry per flow (conntrack) carries the last-seen time for both directions:
 * idle longer than tcp_timeout / tcpfin_timeout (after FIN or RST) / udp_timeout
 * and it counts as absent. */

LB_INLINE __u16 csum_fold32(__u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)s;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for a 32-bit field m -> m' */
LB_INLINE __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
    __u32 s = (__u16)~check;
    s += (~from & 0xffff) + (~from >> 16);
    s += (to & 0xffff) + (to >> 16);
    return ~csum_fold32(s);
}

LB_INLINE __u16 csum_replace2(__u16 check, __u16 from, __u16 to)
{
    __u32 s = (__u16)~check;
    s += (__u16)~from;
    s += to;
    return ~csum_fold32(s);
}

/* ns, from jiffies: one load instead of bpf_ktime_get_ns()'s clock read (30-40 ns
 * per packet here), and a resolution (1-10 ms) far finer than timeouts in seconds */
LB_INLINE __u64 nat_now(const struct nat_config *cfg)
{
    return bpf_jiffies64() * cfg->ns_per_jiffy + cfg->clock_offset_ns;
}

LB_INLINE bool nat_expired(const struct flow_state *st, __u8 proto, const struct nat_config *cfg,
                           __u64 now)
{
    __u64 limit = proto == IPPROTO_UDP ? cfg->udp_ns : st->closing ? cfg->tcpfin_ns : cfg->tcp_ns;
    return now - st->last_ns > limit;
}

LB_INLINE void nat_touch(struct flow_state *st, const struct packet *p, __u64 now)
{
    st->last_ns = now;
    if (p->flow.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)))
        st->closing = 1;
}

/* Rewrite (address, port) at the source (is_src) or destination of the IPv4 packet
 * after the Ethernet header, with both checksums. FURTHER_PROCESSING or XDP_DROP. */
LB_INLINE int nat_rewrite(void *data, void *data_end, bool is_src, __be32 addr, __be16 port)
{
    struct iphdr *iph = data + sizeof(struct ethhdr);
    if ((void *)(iph + 1) > data_end)
        return XDP_DROP;
    __be32 old_addr = is_src ? iph->saddr : iph->daddr;
    iph->check = csum_replace4(iph->check, old_addr, addr);
    if (is_src)
        iph->saddr = addr;
    else
        iph->daddr = addr;
    if (iph->protocol == IPPROTO_TCP) {
        struct tcphdr *th = (void *)(iph + 1);
        if ((void *)(th + 1) > data_end)
            return XDP_DROP;
        __be16 old_port = is_src ? th->source : th->dest;
        __u16 c = csum_replace4(th->check, old_addr, addr);
        th->check = csum_replace2(c, old_port, port);
        if (is_src)
            th->source = port;
        else
            th->dest = port;
    } else {
        struct udphdr *uh = (void *)(iph + 1);
        if ((void *)(uh + 1) > data_end)
            return XDP_DROP;
        __be16 old_port = is_src ? uh->source : uh->dest;
        if (uh->check) {
            __u16 c = csum_replace4(uh->check, old_addr, addr);
            c = csum_replace2(c, old_port, port);
            uh->check = c ? c : 0xffff;
        }
        if (is_src)
            uh->source = port;
        else
            uh->dest = port;
    }
    return FURTHER_PROCESSING;
}

/* inbound: st is the flow's conntrack entry (0 for a RST that starts nothing); cfg
 * and now as the tracked path already looked them up, or 0 (then looked up here) */
LB_INLINE int forward_nat(struct xdp_md *ctx, __u32 id, const struct real *r,
                          const struct packet *p, struct flow_state *st, bool new_flow,
                          const struct nat_config *cfg, __u64 now)
{
    if (!cfg) {
        __u32 zero = 0;
        cfg = nat_config.lookup(&zero);
        if (!cfg)
            return verdict(G_DROP_UNSUPPORTED, XDP_DROP);
        now = nat_now(cfg);
    }
    if (!cfg->tcp_ns) /* the loader never configured NAT: nowhere to send it */
        return verdict(G_DROP_NAT_UNSET, XDP_DROP);
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_DROP;
    __be16 rport = p->flow.dport;
    __be16 *mapped = real_ports.lookup(&id);
    if (mapped && *mapped)
        rport = *mapped;
    if (st) {
        if (new_flow) {
            __builtin_memcpy(st->mac, eth->h_source, ETH_ALEN);
            st->closing = 0;
            struct flow_key back = {.saddr = r->addr,
                                    .daddr = p->flow.saddr,
                                    .sport = rport,
                                    .dport = p->flow.sport,
                                    .proto = p->flow.proto};
            struct nat_back b = {.vip = p->flow.daddr, .vport = p->flow.dport};
            nat_rev.update(&back, &b);
        }
        nat_touch(st, p, now);
    }
    __builtin_memcpy(eth->h_dest, r->mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, cfg->priv_mac, ETH_ALEN);
    int v = nat_rewrite(data, data_end, false, r->addr, rport);
    if (v != FURTHER_PROCESSING)
        return v;
    count(G_NAT_IN);
    return tx_ports.redirect_map(NAT_TX_PRIVATE, XDP_DROP);
}

/* Rewrite the quoted packet of an ICMP error: its source (is_src) or destination
 * address and port; the quoted IPv4 header's checksum and the ICMP checksum follow.
 * The quoted TCP/UDP checksum is left alone (the receiver does not check it). */
LB_INLINE void icmp_quote_rewrite(struct icmphdr *ic, struct iphdr *in, __be16 *port,
                                  bool is_src, __be32 addr, __be16 new_port)
{
    __be32 old = is_src ? in->saddr : in->daddr;
    __u16 old_check = in->check;
    __u16 new_check = csum_replace4(old_check, old, addr);
    __u16 c = csum_replace4(ic->checksum, old, addr);
    c = csum_replace2(c, old_check, new_check);
    c = csum_replace2(c, *port, new_port);
    if (is_src)
        in->saddr = addr;
    else
        in->daddr = addr;
    in->check = new_check;
    *port = new_port;
    ic->checksum = c;
}

/* An ICMP error (destination unreachable, e.g. fragmentation needed; time exceeded)
 * about a NAT flow, translated like the flow's own packets so that path-MTU discovery
 * works through the director:
 *   inbound (public side): to the VIP, quoting a reply VIP:vport -> client:cport;
 *     the outer destination and the quoted source become RIP and RIP:rport, and it
 *     goes to the real server like the flow's requests;
 *   return (private side): to a client, quoting a request client:cport -> RIP:rport;
 *     the quoted destination becomes VIP:vport, the outer source too if it is the
 *     RIP (a router on the private side keeps its own), and it goes to the client.
 * Anything else ICMP (echo, errors about other flows) -> XDP_PASS. */
LB_INLINE int nat_icmp(struct xdp_md *ctx, bool inbound)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *iph = (void *)(eth + 1);
    struct icmphdr *ic = (void *)(iph + 1);
    struct iphdr *in = (void *)(ic + 1);
    __be16 *ports = (void *)(in + 1);
    if ((void *)(ports + 2) > data_end || iph->ihl != 5 ||
        (iph->frag_off & LB_HTONS(IP_MF | IP_OFFSET)))
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED)
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    if (in->version != 4 || in->ihl != 5 ||
        (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP))
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    __u32 zero = 0;
    struct nat_config *cfg = nat_config.lookup(&zero);
    if (!cfg || !cfg->tcp_ns)
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    __u64 now = nat_now(cfg);
    if (inbound) {
        /* quoted: VIP:vport -> client:cport; the flow: client:cport -> VIP:vport */
        struct flow_key fk = {.saddr = in->daddr,
                              .daddr = in->saddr,
                              .sport = ports[1],
                              .dport = ports[0],
                              .proto = in->protocol};
        if (iph->daddr != in->saddr)
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        struct flow_state *st = conntrack.lookup(&fk);
        if (!st || nat_expired(st, fk.proto, cfg, now))
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        __u32 id = st->real;
        struct real *r = reals.lookup(&id);
        if (!real_usable(r, st->addr))
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        __be16 rport = fk.dport;
        __be16 *mapped = real_ports.lookup(&id);
        if (mapped && *mapped)
            rport = *mapped;
        struct flow_key back = {.saddr = st->addr,
                                .daddr = fk.saddr,
                                .sport = rport,
                                .dport = fk.sport,
                                .proto = fk.proto};
        if (!nat_rev.lookup(&back)) /* not a NAT flow */
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        icmp_quote_rewrite(ic, in, &ports[0], true, st->addr, rport);
        iph->check = csum_replace4(iph->check, iph->daddr, st->addr);
        iph->daddr = st->addr;
        __builtin_memcpy(eth->h_dest, r->mac, ETH_ALEN);
        __builtin_memcpy(eth->h_source, cfg->priv_mac, ETH_ALEN);
        count(G_NAT_ICMP);
        return tx_ports.redirect_map(NAT_TX_PRIVATE, XDP_DROP);
    }
    /* quoted: client:cport -> RIP:rport, i.e. the reply key reversed */
    struct flow_key back = {.saddr = in->daddr,
                            .daddr = in->saddr,
                            .sport = ports[1],
                            .dport = ports[0],
                            .proto = in->protocol};
    if (iph->daddr != in->saddr)
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS);
    struct nat_back *b = nat_rev.lookup(&back);
    if (!b)
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS);
    struct flow_key fk = {.saddr = back.daddr,
                          .daddr = b->vip,
                          .sport = back.dport,
                          .dport = b->vport,
                          .proto = back.proto};
    __be32 vip = b->vip;
    __be16 vport = b->vport;
    struct flow_state *st = conntrack.lookup(&fk);
    if (!st || st->addr != back.saddr || nat_expired(st, fk.proto, cfg, now))
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS);
    icmp_quote_rewrite(ic, in, &ports[1], false, vip, vport);
    if (iph->saddr == back.saddr) {
        iph->check = csum_replace4(iph->check, iph->saddr, vip);
        iph->saddr = vip;
    }
    __builtin_memcpy(eth->h_dest, st->mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, cfg->pub_mac, ETH_ALEN);
    count(G_NAT_ICMP);
    return tx_ports.redirect_map(NAT_TX_PUBLIC, XDP_DROP);
}

/* the entry point for the private interface */
int lb_nat_return(struct xdp_md *ctx)
{
    if (!feature_nat())
        return XDP_PASS;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct packet p = {};
    int v = parse_packet(data, data_end, &p);
    if (v == NAT_ICMP)
        return nat_icmp(ctx, false);
    if (v != FURTHER_PROCESSING)
        return v;
    struct nat_back *b = nat_rev.lookup(&p.flow);
    if (!b)
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS);
    struct flow_key fk = {.saddr = p.flow.daddr,
                          .daddr = b->vip,
                          .sport = p.flow.dport,
                          .dport = b->vport,
                          .proto = p.flow.proto};
    __be32 vip = b->vip;
    __be16 vport = b->vport;
    struct flow_state *st = conntrack.lookup(&fk);
    if (!st || st->addr != p.flow.saddr)
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS); /* rescheduled or evicted */
    __u32 zero = 0;
    struct nat_config *cfg = nat_config.lookup(&zero);
    if (!cfg || !cfg->tcp_ns)
        return XDP_PASS;
    __u64 now = nat_now(cfg);
    if (nat_expired(st, p.flow.proto, cfg, now))
        return verdict(G_NAT_EXPIRED, XDP_PASS);
    nat_touch(st, &p, now);
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    __builtin_memcpy(eth->h_dest, st->mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, cfg->pub_mac, ETH_ALEN);
    v = nat_rewrite(data, data_end, true, vip, vport);
    if (v != FURTHER_PROCESSING)
        return v;
    account(st->service, st->real, &p, false);
    count(G_NAT_OUT);
    return tx_ports.redirect_map(NAT_TX_PUBLIC, XDP_DROP);
}
