/* nat6.h: network = nat for IPv6 virtuals (compiled in only when the build has both
 * features nat and ipv6; lb.bpf.c.j2 declares these functions before ipv6.h, which
 * calls them, and gives stubs otherwise). The same semantics as IPv4 NAT (nat.h):
 *   inbound (public side, lb_ingress6): [VIP]:vport -> [RIP]:rport (reals6[id]: the
 *     real's full address), Ethernet towards the real server from the private
 *     interface's MAC, bpf_redirect_map to tx_ports[NAT_TX_PRIVATE]; a new flow's
 *     conntrack6 entry learns the client side's MAC and gets a reverse entry in
 *     nat_rev6, keyed by the reply's 5-tuple;
 *   return (private side, lb_nat_return -> lb_nat_return6): a reply matching
 *     nat_rev6 whose conntrack6 entry is alive and still on that real -> [RIP]:rport
 *     becomes [VIP]:vport, Ethernet towards the learned MAC, redirect to
 *     tx_ports[NAT_TX_PUBLIC]; anything else -> XDP_PASS.
 * IPv6 has no header checksum: the TCP/UDP checksum is updated incrementally over the
 * pseudo header's address and the port (RFC 1624). A UDP checksum of 0 is invalid in
 * IPv6 (RFC 8200 8.1; the receiver discards it): such a datagram of a NAT flow is
 * dropped (drop_bad_l4), and a computed 0 is sent as 0xffff.
 * The hop limit is decremented both ways, as a router does; a packet that arrives
 * with a hop limit <= 1 passes to the kernel (pass_hop_limit): inbound it is for the
 * VIP, an address of the director, so its stack takes it (a traceroute to the VIP
 * ends at the director); on the private side a forwarding stack sends Time Exceeded.
 * A nat_rev6 value cannot hold a 16-byte VIP where nat_rev's holds 4 bytes: it keeps
 * the flow's service index (the VIP is service_info6[service].key.vip; a flow whose
 * index now holds another service then misses its conntrack6 entry and passes) and
 * the VIP's port (flow_state.vport). */

LB_MAP("array", __u32, struct ct6_set, nat_rev6, CT_SETS, 0);

struct icmp6_err {            /* an ICMPv6 error message's first 8 bytes */
    __u8 type;
    __u8 code;
    __u16 check;
    __be32 rest;              /* Packet Too Big: the MTU */
};

#define ICMP6_DST_UNREACH 1
#define ICMP6_PACKET_TOO_BIG 2
#define ICMP6_TIME_EXCEEDED 3
#define NEXTHDR_ICMP6 58

/* What replacing IPv6 address `from` by `to` adds to a ones' complement checksum:
 * ~from + to summed over 32-bit words in 64 bits (2^32 = 1 modulo 0xffff, so the sum
 * folds to the same 16-bit value as one over halves, at half the instructions; at
 * most 8 x 0xffffffff: no overflow). csum_apply folds it with the rest. */
LB_INLINE __u64 csum_addr6_delta(const __be32 *from, const __be32 *to)
{
    __u64 s = 0;
#pragma unroll
    for (int i = 0; i < 4; i++)
        s += (__u64)(__u32)~from[i] + to[i];
    return s;
}

/* RFC 1624 eqn. 3 with a precomputed delta (csum_addr6_delta, twice at most, and
 * port halves: below 2^36): ~(~HC + delta) folded to 16 bits once, in three steps
 * (< 2^37 -> <= 0x20ffff -> <= 0x1001f -> <= 0xffff) */
LB_INLINE __u16 csum_apply(__u16 check, __u64 delta)
{
    __u64 s = (__u16)~check + delta;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return ~(__u16)((s & 0xffff) + (s >> 16));
}

/* reals[i].addr of an IPv6 real: the XOR of its four words, 1 if 0 (maps.addr_word) */
LB_INLINE __be32 addr6_tag(const __be32 *a)
{
    __u32 t = a[0] ^ a[1] ^ a[2] ^ a[3];
    return t ? t : 1;
}

/* an IPv6 address between two 8-byte aligned places (a flow key, a map value): two
 * 64-bit moves, in the words the connection table's hash and compares read */
LB_INLINE void addr6_copy64(__be32 *to, const __be32 *from)
{
    ((__u64 *)to)[0] = ((const __u64 *)from)[0];
    ((__u64 *)to)[1] = ((const __u64 *)from)[1];
}

LB_INLINE void addr6_copy(__be32 *to, const __be32 *from)
{
    to[0] = from[0];
    to[1] = from[1];
    to[2] = from[2];
    to[3] = from[3];
}

LB_INLINE void nat6_touch(struct flow_state *st, const struct packet6 *p, __u64 now)
{
    st->last_ns = now;
    if (p->flow.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)))
        st->closing = 1;
}

/* Rewrite (address, port) at the source (is_src) or destination of the IPv6 packet
 * after the Ethernet header, with the TCP/UDP checksum, and decrement the hop limit;
 * first what a NAT packet must have, checked before anything is written: a hop limit
 * > 1 (else XDP_PASS, pass_hop_limit) and, for UDP, a checksum (else XDP_DROP,
 * drop_bad_l4). FURTHER_PROCESSING or that verdict (XDP_DROP if truncated: parse6
 * checked both headers, so only a changed frame gets there). */
LB_INLINE int nat6_rewrite(void *data, void *data_end, bool is_src, const __be32 *addr,
                           __be16 port)
{
    struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
    struct udphdr *uh = (void *)(ip6 + 1); /* TCP's ports sit where UDP's do */
    if ((void *)(uh + 1) > data_end)
        return XDP_DROP;
    if (ip6->hop_limit <= 1)
        return verdict(G_PASS_HOP_LIMIT, XDP_PASS);
    __be32 *a = is_src ? ip6->saddr.in6_u.u6_addr32 : ip6->daddr.in6_u.u6_addr32;
    __u64 delta = csum_addr6_delta(a, addr);
    if (ip6->nexthdr == IPPROTO_TCP) {
        struct tcphdr *th = (void *)(ip6 + 1);
        if ((void *)(th + 1) > data_end)
            return XDP_DROP;
        __be16 *pp = is_src ? &th->source : &th->dest;
        th->check = csum_apply(th->check, delta + (__u16)~*pp + port);
        *pp = port;
    } else {
        if (!uh->check)
            return verdict(G_DROP_BAD_L4, XDP_DROP);
        __be16 *pp = is_src ? &uh->source : &uh->dest;
        __u16 c = csum_apply(uh->check, delta + (__u16)~*pp + port);
        uh->check = c ? c : 0xffff;
        *pp = port;
    }
    ip6->hop_limit -= 1;
    addr6_copy(a, addr);
    return FURTHER_PROCESSING;
}

/* The hop limit and (UDP) checksum a new NAT flow's packet must have before its
 * state is written (nat6_rewrite checks them again, before it writes the packet):
 * FURTHER_PROCESSING, or the verdict. */
LB_INLINE int nat6_admissible(void *data, void *data_end, __u8 proto)
{
    struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
    struct udphdr *uh = (void *)(ip6 + 1);
    if ((void *)(uh + 1) > data_end)
        return XDP_DROP; /* parse6 saw a whole TCP/UDP header: cannot happen */
    if (ip6->hop_limit <= 1)
        return verdict(G_PASS_HOP_LIMIT, XDP_PASS);
    if (proto == IPPROTO_UDP && !uh->check)
        return verdict(G_DROP_BAD_L4, XDP_DROP);
    return FURTHER_PROCESSING;
}

/* inbound: st is the flow's way in its conntrack6 set, refreshed here (0: a new
 * flow, whose entries nat6_new_flow wrote, or a RST that starts nothing) */
LB_INLINE int forward_nat6(struct xdp_md *ctx, __u32 id, const struct real *r,
                           const struct packet6 *p, struct flow_state *st,
                           const struct nat_config *cfg, __u64 now)
{
    if (!cfg->tcp_ns) /* the loader never configured NAT: nowhere to send it */
        return verdict(G_DROP_NAT_UNSET, XDP_DROP);
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct real6 *r6 = reals6.lookup(&id);
    if (!r6)
        return verdict(G_DROP_NO_REAL, XDP_DROP);
    int v = nat6_rewrite(data, data_end, false, r6->addr, nat_real_port(id, p->flow.dport));
    if (v != FURTHER_PROCESSING)
        return v; /* hop limit, UDP checksum 0: nothing written, the flow not refreshed */
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_DROP;
    __builtin_memcpy(eth->h_dest, r->mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, cfg->priv_mac, ETH_ALEN);
    if (st)
        nat6_touch(st, p, now);
    count(G_NAT_IN);
    return tx_ports.redirect_map(NAT_TX_PRIVATE, XDP_DROP);
}

/* A new IPv6 NAT flow of svc on real id: its nat_rev6 entry, then its conntrack6
 * entry (in `set`), both before the packet goes; a RST starts nothing. A set held by
 * another CPU too long drops the packet (the client sends it again). */
LB_INLINE int nat6_new_flow(struct xdp_md *ctx, struct ct6_set *set, const struct service *svc,
                            __u32 id, const struct real *r, const struct packet6 *p, __u32 fh)
{
    __u32 zero = 0;
    struct nat_config *cfg = nat_config.lookup(&zero);
    if (!cfg)
        return verdict(G_DROP_UNSUPPORTED, XDP_DROP);
    if (!cfg->tcp_ns)
        return verdict(G_DROP_NAT_UNSET, XDP_DROP);
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    int v = nat6_admissible(data, data_end, p->flow.proto);
    if (v != FURTHER_PROCESSING)
        return v;
    __u64 now = nat_now(cfg);
    if (!(p->flow.proto == IPPROTO_TCP && (p->tcp_flags & TCP_RST))) {
        struct ethhdr *eth = data;
        if ((void *)(eth + 1) > data_end)
            return XDP_DROP;
        struct real6 *r6 = reals6.lookup(&id);
        if (!r6)
            return verdict(G_DROP_NO_REAL, XDP_DROP);
        struct flow_key6 back = {.sport = nat_real_port(id, p->flow.dport),
                                 .dport = p->flow.sport,
                                 .proto = p->flow.proto};
        addr6_copy(back.saddr, r6->addr);
        addr6_copy(back.daddr, p->flow.saddr);
        struct flow_state e = {.real = id,
                               .addr = r->addr,
                               .service = svc->index,
                               .hash = ct6_hash(&p->flow),
                               .last_ns = now};
        e.vport = p->flow.dport;
        __u32 ri = CT_SET(ct6_hash(&back));
        struct ct6_set *rset = nat_rev6.lookup(&ri);
        if (!rset || ct6_insert(rset, &back, &e) == CT_MISS)
            return XDP_DROP;
        __builtin_memcpy(e.mac, eth->h_source, ETH_ALEN);
        e.hash = fh;
        bool counted = lc_kind(svc) != 0; /* the conntrack6 entry holds the count */
        if (counted) {
            e.used = CT_COUNTED;
            lc_count(id);
        }
        if (ct6_insert(set, &p->flow, &e) == CT_MISS) {
            if (counted)
                lc_release(id);
            return XDP_DROP;
        }
    }
    return forward_nat6(ctx, id, r, p, 0, cfg, now);
}

/* The live conntrack6 entry of an IPv6 NAT reply (or of an ICMPv6 error quoting a
 * request): `back` is the reply's 5-tuple (RIP, client, rport, cport). Its nat_rev6
 * entry names the service (whose VIP in service_info6, where *vip points, and the
 * entry's vport make the flow's key) and the flow's conntrack6 set; the entry there
 * must still be on this RIP. Fills *rev, *st, *vip and the sets and ways; false if
 * any of that fails. The caller checks timeouts. */
LB_INLINE bool nat6_flow_of_reply(const struct flow_key6 *back, struct flow_state *rev,
                                  struct flow_state *st, const __be32 **vip,
                                  struct ct6_set **set, int *way, struct ct6_set **rset,
                                  int *rway)
{
    __u32 ri = CT_SET(ct6_hash(back));
    *rset = nat_rev6.lookup(&ri);
    if (!*rset)
        return false;
    *rway = ct6_find(*rset, back, rev);
    if (*rway == CT_MISS)
        return false;
    __u32 sid = rev->service;
    struct service_info6 *si = service_info6.lookup(&sid);
    if (!si)
        return false;
    struct flow_key6 fk = {.sport = back->dport, .dport = rev->vport, .proto = back->proto};
    addr6_copy64(fk.saddr, back->daddr);
    addr6_copy64(fk.daddr, si->key.vip);
    __u32 si_set = CT_SET(rev->hash);
    *set = conntrack6.lookup(&si_set);
    if (!*set)
        return false;
    *way = ct6_find(*set, &fk, st);
    if (*way == CT_MISS || st->addr != addr6_tag(back->saddr)) /* rescheduled, evicted */
        return false;
    *vip = si->key.vip;
    return true;
}

/* the private side's IPv6 packets (lb_nat_return, nat.h, hands them over) */
LB_INLINE int lb_nat_return6(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct packet6 p = {};
    int v = parse6(data, data_end, &p);
    if (v == NAT_ICMP)
        return nat6_icmp(ctx, false);
    if (v != FURTHER_PROCESSING)
        return v;
    __u32 zero = 0;
    struct nat_config *cfg = nat_config.lookup(&zero);
    if (!cfg || !cfg->tcp_ns)
        return XDP_PASS;
    __u64 now = nat_now(cfg);
    struct flow_state rev, st;
    struct ct6_set *set, *rset;
    int way, rway;
    const __be32 *vip;
    if (!nat6_flow_of_reply(&p.flow, &rev, &st, &vip, &set, &way, &rset, &rway))
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS);
    if (nat_expired(&st, p.flow.proto, cfg, now))
        return verdict(G_NAT_EXPIRED, XDP_PASS);
    v = nat6_rewrite(data, data_end, true, vip, rev.vport);
    if (v != FURTHER_PROCESSING)
        return v; /* hop limit, UDP checksum 0: nothing written, the flow not refreshed */
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    __builtin_memcpy(eth->h_dest, st.mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, cfg->pub_mac, ETH_ALEN);
    way &= CT_WAYS - 1;
    nat6_touch(&set->val[way], &p, now);
    ct6_touch(set, way);
    ct6_touch(rset, rway);
    struct packet acc = {.len = p.len}; /* account() reads the length only */
    account(st.service, st.real, &acc, false);
    count(G_NAT_OUT);
    return tx_ports.redirect_map(NAT_TX_PUBLIC, XDP_DROP);
}

/* An ICMPv6 error (destination unreachable, packet too big, time exceeded) about an
 * IPv6 NAT flow, translated like the flow's packets so that path-MTU discovery works
 * through the director:
 *   inbound (public side): to the VIP, quoting a reply [VIP]:vport -> client; the
 *     outer destination and the quoted source become [RIP]:rport, to the real server;
 *   return (private side): to a client, quoting a request client -> [RIP]:rport; the
 *     quoted destination becomes [VIP]:vport, the outer source too if it is the RIP
 *     (a router on the private side keeps its own), to the client.
 * The ICMPv6 checksum covers the pseudo header (RFC 4443 2.3): it follows the outer
 * address, the quoted address and port. The quoted TCP/UDP checksum is left as it was
 * (receivers do not check it). Extension headers outside or inside, a quote that is
 * neither TCP nor UDP or shorter than its ports, a payload length short of that,
 * other types (neighbour discovery, echo ...), errors about other flows -> XDP_PASS. */
LB_INLINE int nat6_icmp(struct xdp_md *ctx, bool inbound)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct ipv6hdr *ip6 = (void *)(eth + 1);
    struct icmp6_err *ic = (void *)(ip6 + 1);
    struct ipv6hdr *in = (void *)(ic + 1);
    __be16 *ports = (void *)(in + 1);
    if ((void *)(ports + 2) > data_end)
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    if (ic->type != ICMP6_DST_UNREACH && ic->type != ICMP6_PACKET_TOO_BIG &&
        ic->type != ICMP6_TIME_EXCEEDED)
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    if (LB_NTOHS(ip6->payload_len) < sizeof(*ic) + sizeof(*in) + 4 || in->version != 6 ||
        (in->nexthdr != IPPROTO_TCP && in->nexthdr != IPPROTO_UDP))
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    __u32 zero = 0;
    struct nat_config *cfg = nat_config.lookup(&zero);
    if (!cfg || !cfg->tcp_ns)
        return verdict(G_PASS_NOT_VIP, XDP_PASS);
    __u64 now = nat_now(cfg);
    __be32 *outer_src = ip6->saddr.in6_u.u6_addr32;
    __be32 *outer_dst = ip6->daddr.in6_u.u6_addr32;
    __be32 *quoted_src = in->saddr.in6_u.u6_addr32;
    __be32 *quoted_dst = in->daddr.in6_u.u6_addr32;
    if (inbound) {
        /* quoted: VIP:vport -> client:cport; the flow: client:cport -> VIP:vport */
        struct flow_key6 fk = {.sport = ports[1], .dport = ports[0], .proto = in->nexthdr};
        addr6_copy(fk.saddr, quoted_dst);
        addr6_copy(fk.daddr, quoted_src);
        if (!addr6_eq(outer_dst, fk.daddr))
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        struct flow_state st;
        __u32 si = CT_SET(ct6_hash(&fk));
        struct ct6_set *set = conntrack6.lookup(&si);
        if (!set || ct6_find(set, &fk, &st) == CT_MISS || nat_expired(&st, fk.proto, cfg, now))
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        __u32 id = st.real;
        struct real *r = reals.lookup(&id);
        struct real6 *r6 = reals6.lookup(&id);
        if (!r6 || !real_usable(r, st.addr))
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        __be16 rport = nat_real_port(id, fk.dport);
        struct flow_key6 back = {.sport = rport, .dport = fk.sport, .proto = fk.proto};
        addr6_copy(back.saddr, r6->addr);
        addr6_copy(back.daddr, fk.saddr);
        struct flow_state rev;
        __u32 ri = CT_SET(ct6_hash(&back));
        struct ct6_set *rset = nat_rev6.lookup(&ri);
        if (!rset || ct6_find(rset, &back, &rev) == CT_MISS) /* not a NAT flow */
            return verdict(G_PASS_NOT_VIP, XDP_PASS);
        if (ip6->hop_limit <= 1)
            return verdict(G_PASS_HOP_LIMIT, XDP_PASS);
        __u64 delta = 2 * csum_addr6_delta(fk.daddr, r6->addr) + (__u16)~ports[0] + rport;
        ic->check = csum_apply(ic->check, delta);
        addr6_copy(outer_dst, r6->addr);
        addr6_copy(quoted_src, r6->addr);
        ports[0] = rport;
        ip6->hop_limit -= 1;
        __builtin_memcpy(eth->h_dest, r->mac, ETH_ALEN);
        __builtin_memcpy(eth->h_source, cfg->priv_mac, ETH_ALEN);
        count(G_NAT_ICMP);
        return tx_ports.redirect_map(NAT_TX_PRIVATE, XDP_DROP);
    }
    /* quoted: client:cport -> RIP:rport, i.e. the reply key reversed */
    struct flow_key6 back = {.sport = ports[1], .dport = ports[0], .proto = in->nexthdr};
    addr6_copy(back.saddr, quoted_dst);
    addr6_copy(back.daddr, quoted_src);
    if (!addr6_eq(outer_dst, back.daddr))
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS);
    struct flow_state rev, st;
    struct ct6_set *set, *rset;
    int way, rway;
    const __be32 *vip;
    if (!nat6_flow_of_reply(&back, &rev, &st, &vip, &set, &way, &rset, &rway) ||
        nat_expired(&st, back.proto, cfg, now))
        return verdict(G_PASS_NAT_NO_FLOW, XDP_PASS);
    if (ip6->hop_limit <= 1)
        return verdict(G_PASS_HOP_LIMIT, XDP_PASS);
    __u64 delta = csum_addr6_delta(back.saddr, vip) + (__u16)~ports[1] + rev.vport;
    if (addr6_eq(outer_src, back.saddr)) { /* from the real server itself */
        delta += csum_addr6_delta(back.saddr, vip);
        addr6_copy(outer_src, vip);
    }
    ic->check = csum_apply(ic->check, delta);
    addr6_copy(quoted_dst, vip);
    ports[1] = rev.vport;
    ip6->hop_limit -= 1;
    __builtin_memcpy(eth->h_dest, st.mac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, cfg->pub_mac, ETH_ALEN);
    count(G_NAT_ICMP);
    return tx_ports.redirect_map(NAT_TX_PUBLIC, XDP_DROP);
}
