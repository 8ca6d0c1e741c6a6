/* nat.h: network = nat (piranha's default), both directions.
 *   inbound (public side, lb_ingress): VIP:vport -> RIP:rport, Ethernet towards the
 *     real server from the private interface's MAC, bpf_redirect_map to
 *     tx_ports[NAT_TX_PRIVATE]; the flow's conntrack entry learns the client side's
 *     MAC and gets a reverse entry (nat_rev) keyed by the reply's 5-tuple, which
 *     carries the VIP side and the flow's conntrack set (conntrack.h: both tables).
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

/* an address and a port replaced at once: one fold instead of two */
LB_INLINE __u16 csum_replace_addr_port(__u16 check, __u32 from, __u32 to, __u16 pfrom, __u16 pto)
{
    __u32 s = (__u16)~check;
    s += (~from & 0xffff) + (~from >> 16);
    s += (to & 0xffff) + (to >> 16);
    s += (__u16)~pfrom;
    s += pto;
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
        th->check = csum_replace_addr_port(th->check, old_addr, addr, old_port, port);
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
            __u16 c = csum_replace_addr_port(uh->check, old_addr, addr, old_port, port);
            uh->check = c ? c : 0xffff;
        }
        if (is_src)
            uh->source = port;
        else
            uh->dest = port;
    }
    return FURTHER_PROCESSING;
}

/* the real server's port for NAT port mapping: real_ports[id], or the VIP's port */
LB_INLINE __be16 nat_real_port(__u32 id, __be16 vport)
{
    __be16 *mapped = real_ports.lookup(&id);
    return mapped && *mapped ? *mapped : vport;
}

/* inbound: st is the flow's way in its conntrack set, refreshed here (0: a new flow,
 * whose entries nat_new_flow wrote, or a RST that starts nothing) */
LB_INLINE int forward_nat(struct xdp_md *ctx, __u32 id, const struct real *r,
                          const struct packet *p, struct flow_state *st,
                          const struct nat_config *cfg, __u64 now)
{
    if (!cfg->tcp_ns) /* the loader never configured NAT: nowhere to send it */
        return verdict(G_DROP_NAT_UNSET, XDP_DROP);
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_DROP;
    __be16 rport = nat_real_port(id, p->flow.dport);
    if (st)
        nat_touch(st, p, now);
    __builtin_memcpy(eth->h_dest, r->mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, cfg->priv_mac, ETH_ALEN);
    int v = nat_rewrite(data, data_end, false, r->addr, rport);
    if (v != FURTHER_PROCESSING)
        return v;
    count(G_NAT_IN);
    return tx_ports.redirect_map(NAT_TX_PRIVATE, XDP_DROP);
}

/* A new NAT flow of svc on real id: its reverse entry in nat_rev (keyed by the reply's
 * 5-tuple, carrying the VIP side) and its conntrack entry (the client side's MAC, the
 * clock), both written before the packet goes; a RST starts nothing. When another CPU
 * holds either set too long the packet is dropped (the client sends it again) rather
 * than forwarded without the state its reply needs. */
LB_INLINE int nat_new_flow(struct xdp_md *ctx, struct ct_set *set, const struct service *svc,
                           __u32 id, const struct real *r, const struct packet *p, __u32 fh,
                           __u32 ch)
{
    __u32 zero = 0;
    struct nat_config *cfg = nat_config.lookup(&zero);
    if (!cfg)
        return verdict(G_DROP_UNSUPPORTED, XDP_DROP);
    if (!cfg->tcp_ns)
        return verdict(G_DROP_NAT_UNSET, XDP_DROP);
    __u64 now = nat_now(cfg);
    if (!is_rst(p)) {
        void *data = (void *)(long)ctx->data;
        void *data_end = (void *)(long)ctx->data_end;
        struct ethhdr *eth = data;
        if ((void *)(eth + 1) > data_end)
            return XDP_DROP;
        struct flow_key back = {.saddr = r->addr,
                                .daddr = p->flow.saddr,
                                .sport = nat_real_port(id, p->flow.dport),
                                .dport = p->flow.sport,
                                .proto = p->flow.proto};
        struct flow_state e = {
            .real = id, .addr = r->addr, .service = svc->index, .hash = ch, .last_ns = now};
        e.vip = p->flow.daddr;
        e.vport = p->flow.dport;
        __u32 ri = CT_SET(ct_hash(&back));
        struct ct_set *rset = nat_rev.lookup(&ri);
        if (!rset || ct_insert(rset, &back, &e) == CT_MISS)
            return XDP_DROP;
        __builtin_memcpy(e.mac, eth->h_source, ETH_ALEN);
        e.hash = fh;
        bool counted = lc_kind(svc) != 0; /* the conntrack entry holds the count */
        if (counted) {
            e.used = CT_COUNTED;
            lc_count(id);
        }
        if (ct_insert(set, &p->flow, &e) == CT_MISS) {
            if (counted)
                lc_release(id);
            return XDP_DROP;
        }
    }
    return forward_nat(ctx, id, r, p, 0, cfg, now);
}

/* The live conntrack entry of a NAT reply (or an ICMP error quoting a request):
 * `back` is the reply's 5-tuple (RIP, client, rport, cport); finds its nat_rev entry,
 * then the flow's conntrack entry, which must still be on that RIP
 * (the caller checks timeouts). Fills *rev and *st, and the sets and ways for
 * refreshing; false if any of that fails. */
LB_INLINE bool nat_flow_of_reply(const struct flow_key *back, struct flow_state *rev,
                                 struct flow_state *st, struct ct_set **set, int *way,
                                 struct ct_set **rset, int *rway)
{
    __u32 ri = CT_SET(ct_hash(back));
    *rset = nat_rev.lookup(&ri);
    if (!*rset)
        return false;
    *rway = ct_find(*rset, back, rev);
    if (*rway == CT_MISS)
        return false;
    struct flow_key fk = {.saddr = back->daddr,
                          .daddr = rev->vip,
                          .sport = back->dport,
                          .dport = rev->vport,
                          .proto = back->proto};
    __u32 si = CT_SET(rev->hash);
    *set = conntrack.lookup(&si);
    if (!*set)
        return false;
    *way = ct_find(*set, &fk, st);
    if (*way == CT_MISS || st->addr != back->saddr) /* rescheduled or evicted */
        return false;
    return true;
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
        struct flow_state stc;
        __u32 si = CT_SET(ct_hash(&fk));
        struct ct_set *set = conntrack.lookup(&si);
        if (!set || ct_find(set, &fk, &stc) == CT_MISS || nat_expired(&stc, fk.proto, cfg, now))
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        struct flow_state *st = &stc;
        __u32 id = st->real;
        struct real *r = reals.lookup(&id);
        if (!real_usable(r, st->addr))
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        __be16 rport = nat_real_port(id, fk.dport);
        struct flow_key back = {.saddr = st->addr,
                                .daddr = fk.saddr,
                                .sport = rport,
                                .dport = fk.sport,
                                .proto = fk.proto};
        struct flow_state rev;
        __u32 ri = CT_SET(ct_hash(&back));
        struct ct_set *rset = nat_rev.lookup(&ri);
        if (!rset || ct_find(rset, &back, &rev) == CT_MISS) /* not a NAT flow */
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
    struct flow_state rev, stc;
    struct ct_set *set, *rset;
    int way, rway;
    if (!nat_flow_of_reply(&back, &rev, &stc, &set, &way, &rset, &rway) ||
        nat_expired(&stc, back.proto, cfg, now))
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS);
    struct flow_state *st = &stc;
    __be32 vip = rev.vip;
    __be16 vport = rev.vport;
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

LB_INLINE int lb_nat_return6(struct xdp_md *ctx); /* nat6.h, or a stub (lb.bpf.c.j2) */

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
    if (feature_ipv6() && v == IPV6_PACKET)
        return lb_nat_return6(ctx); /* nat6.h (a stub without IPv6 NAT) */
    if (v != FURTHER_PROCESSING)
        return v;
    __u32 zero = 0;
    struct nat_config *cfg = nat_config.lookup(&zero);
    if (!cfg || !cfg->tcp_ns)
        return XDP_PASS;
    __u64 now = nat_now(cfg);
    struct flow_state rev, st;
    struct ct_set *set, *rset;
    int way, rway;
    if (!nat_flow_of_reply(&p.flow, &rev, &st, &set, &way, &rset, &rway))
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS);
    if (nat_expired(&st, p.flow.proto, cfg, now))
        return verdict(G_NAT_EXPIRED, XDP_PASS);
    way &= CT_WAYS - 1;
    nat_touch(&set->val[way], &p, now);
    ct_touch(set, way);
    ct_touch(rset, rway);
    __be32 vip = rev.vip;
    __be16 vport = rev.vport;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    __builtin_memcpy(eth->h_dest, st.mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, cfg->pub_mac, ETH_ALEN);
    v = nat_rewrite(data, data_end, true, vip, vport);
    if (v != FURTHER_PROCESSING)
        return v;
    account(st.service, st.real, &p, false);
    count(G_NAT_OUT);
    return tx_ports.redirect_map(NAT_TX_PUBLIC, XDP_DROP);
}
