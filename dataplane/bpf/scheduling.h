/* scheduling.h: choosing the real server of a packet.
 *   1. a tracked flow (conntrack) keeps its real server unless that server failed;
 *      a SYN always starts a new flow;
 *   2. persistent services: a live template for the masked source address wins;
 *   3. otherwise the service's Maglev table, indexed by a hash of the 5-tuple
 *      (rr/wrr and the approximated schedulers), of the source address (sh, and
 *      persistent services) or of the destination address (dh);
 *   4. the least-connection family (lc, wlc, sed, nq; lblc and lblcr approximated)
 *      compares that slot's real with a second slot's, by a second hash, and takes
 *      the less loaded one by real_conns (lc_pick).
 * A tracked flow costs array lookups only (its conntrack set, service_info, reals);
 * a new one the same plus a service hint and a table slot, and a conntrack insert
 * (conntrack.h). Tables and flags come from userspace; BPF only looks things up. */

LB_INLINE __u32 rotl32(__u32 x, int r)
{
    return (x << r) | (x >> (32 - r));
}

LB_INLINE __u32 hash_step(__u32 h, __u32 k)
{
    k *= 0xcc9e2d51u;
    k = rotl32(k, 15);
    k *= 0x1b873593u;
    h ^= k;
    h = rotl32(h, 13);
    return h * 5 + 0xe6546b64u;
}

LB_INLINE __u32 hash_final(__u32 h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

LB_INLINE __u32 flow_hash(const struct flow_key *f)
{
    __u32 h = hash_step(HASH_SEED, f->saddr);
    h = hash_step(h, f->daddr);
    h = hash_step(h, ((__u32)f->sport << 16) | f->dport);
    return hash_final(hash_step(h, f->proto));
}

LB_INLINE __u32 addr_hash(__be32 addr)
{
    return hash_final(hash_step(HASH_SEED, addr));
}

LB_INLINE bool real_usable(const struct real *r, __be32 addr)
{
    return r && r->addr && r->addr == addr && !(r->flags & REAL_F_FAILED);
}

/* the Maglev slot for this packet: 0 when the table is empty */
LB_INLINE __u32 table_lookup(const struct service *svc, const struct packet *p, __u32 h)
{
    __u32 slot = svc->index * RING_SIZE + h % RING_SIZE;
    __u32 *id = rings.lookup(&slot);
    return id ? *id : 0;
}

/* The least-connection family. real_conns[id] counts the conntrack entries marked
 * CT_COUNTED that point at real id: +1 before such an entry is inserted (-1 if the
 * insert fails), -1 when it ends: replaced or evicted (ct_insert, under the set's
 * lock), or a FIN or RST from the client (ct_uncount, under the lock). Atomic adds,
 * one counter per real shared by all CPUs. A count can still drift (entries lost to
 * a table resize, a real index reused for another server): a decrement is skipped at
 * 0 and a count read as negative is 0, so drift only makes a server look less busy
 * than it is until its flows end. Compiled in only with feature_lc(). */
LB_INLINE __u32 lc_kind(const struct service *svc)
{
    return feature_lc() ? (svc->flags & SVC_LC_MASK) >> SVC_LC_SHIFT : 0;
}

LB_INLINE void lc_count(__u32 id)
{
    __u32 *c = real_conns.lookup(&id);
    if (c)
        __sync_fetch_and_add(c, 1);
}

LB_INLINE void lc_release(__u32 id)
{
    __u32 *c = real_conns.lookup(&id);
    if (c && *(volatile __s32 *)c > 0)
        __sync_fetch_and_add(c, (__u32)-1);
}

LB_INLINE __u64 lc_conns(__u32 id)
{
    __u32 *c = real_conns.lookup(&id);
    __s32 n = c ? *(volatile __s32 *)c : 0;
    return n > 0 ? (__u64)n : 0;
}

LB_INLINE __u64 lc_weight(__u32 id)
{
    __u32 *w = real_weights.lookup(&id);
    return w ? *w : 0;
}

/* Is real b a better choice than real a for a new flow? Loads are compared by cross
 * multiplication (no division): wlc conns/weight, sed and nq (conns + 1)/weight.
 * Ties, and an unknown weight (0: not written), keep a. */
LB_INLINE bool lc_prefer_b(__u32 kind, __u32 a, __u32 b)
{
    __u64 ca = lc_conns(a), cb = lc_conns(b);
    if (kind == SVC_LC_LC)
        return cb < ca;
    __u64 wa = lc_weight(a), wb = lc_weight(b);
    if (!wa || !wb)
        return false;
    if (kind == SVC_LC_WLC)
        return cb * wa < ca * wb;
    if (kind == SVC_LC_NQ) {
        if (!ca)
            return false;
        if (!cb)
            return true;
    }
    if (kind == SVC_LC_SED || kind == SVC_LC_NQ)
        return (cb + 1) * wa < (ca + 1) * wb;
    /* lblc, lblcr: leave the destination's server only when it has more flows than
     * its weight and the other has fewer than half its own (IPVS's overload test,
     * against one other server instead of all of them) */
    return ca > wa && cb * 2 < wb;
}

/* the second candidate's hash: independent of h's slot, the same on every router */
LB_INLINE __u32 lc_second_hash(__u32 h)
{
    return hash_final(h ^ 0x5bd1e995u);
}

/* Power of two choices: the real at the Maglev slot of h (chosen, *cr) or the one at
 * the slot of a second hash, whichever is less loaded by the service's kind; the
 * first when they tie, are the same, or the second cannot take flows. */
LB_INLINE void lc_pick(const struct service *svc, const struct packet *p, __u32 h,
                       __u32 *chosen, struct real **cr)
{
    __u32 kind = lc_kind(svc);
    if (!kind || !*chosen)
        return;
    __u32 other = table_lookup(svc, p, lc_second_hash(h));
    if (!other || other == *chosen)
        return;
    struct real *or = reals.lookup(&other);
    if (!or || !or->addr || (or->flags & (REAL_F_FAILED | REAL_F_QUIESCED)))
        return;
    if (lc_prefer_b(kind, *chosen, other)) {
        *chosen = other;
        *cr = or;
        count(G_LC_SECOND);
    }
}

LB_INLINE __u32 schedule_hash(const struct service *svc, const struct packet *p, __u32 fh)
{
    if (feature_sh() && (svc->flags & SVC_F_HASH_SRC))
        return addr_hash(p->flow.saddr);
    if (feature_dh() && (svc->flags & SVC_F_HASH_DST))
        return addr_hash(p->flow.daddr);
    return fh;
}

/* service_hints[svc_hint_slot(key)] = a service's index + 1 (0: none), written with the
 * services by maps.py (svc_hint_slot there is the same function). */
LB_INLINE __u32 svc_hint_slot(const struct service_key *k)
{
    __u64 h = ((__u64)k->vip * 0x9e3779b97f4a7c15ull) ^
              ((__u64)(((__u32)k->port << 8) | k->proto) * 0xc2b2ae3d27d4eb4full);
    return (h >> 32) & (SVC_HINTS - 1);
}

/* The service under key: its hint, which counts only if service_info at that index
 * holds this very key (two inlined array lookups), else the services hash (a
 * non-inlined lookup, ~25 ns: keys whose hint slot another service took, and every
 * packet that is for no service). A stale hint can only cost the hash lookup. */
LB_INLINE struct service *service_by_key(const struct service_key *key)
{
    __u32 slot = svc_hint_slot(key);
    __u32 *hint = service_hints.lookup(&slot);
    if (hint && *hint) {
        __u32 index = *hint - 1;
        struct service_info *si = service_info.lookup(&index);
        if (si && si->key.vip == key->vip && si->key.port == key->port &&
            si->key.proto == key->proto)
            return &si->svc;
    }
    return services.lookup((struct service_key *)key);
}

/* the service a packet is for: (VIP, port, protocol), then (VIP, 0, protocol) when the
 * config has port-0 (fwmark or persistent all-port) services */
LB_INLINE struct service *find_service(const struct packet *p)
{
    struct service_key key = {.vip = p->flow.daddr, .port = p->flow.dport, .proto = p->flow.proto};
    struct service *svc = service_by_key(&key);
    if (!svc && feature_any_port()) {
        key.port = 0;
        svc = service_by_key(&key);
    }
    return svc;
}

/* does the service an index holds now still serve this packet's VIP, port, protocol? */
LB_INLINE bool service_matches(const struct service_key *k, const struct packet *p)
{
    return k->vip == p->flow.daddr && k->proto == p->flow.proto &&
           (k->port == p->flow.dport || k->port == 0);
}

/* A live template (ps, of the client's masked address) gives the real it holds,
 * if that real can take new flows: into *chosen and *cr. Used by both families. */
LB_INLINE void persist_take(const struct service *svc, const struct persist_state *ps,
                            __u64 now, __u32 *chosen, struct real **cr)
{
    if (!ps || now - ps->last_ns >= (__u64)svc->persist_s * 1000000000ull)
        return;
    __u32 pid = ps->real;
    struct real *pr = reals.lookup(&pid);
    if (real_usable(pr, ps->addr) && !(pr->flags & REAL_F_QUIESCED)) {
        *chosen = pid;
        *cr = pr;
        count(G_PERSIST_HIT);
    }
}

/* The Maglev slot of h, then (lc family) the less loaded of it and the slot of
 * lc_h's second hash: into *chosen and *cr. Used by both families. */
LB_INLINE void table_pick(const struct service *svc, __u32 h, __u32 lc_h, __u32 *chosen,
                          struct real **cr)
{
    *chosen = table_lookup(svc, 0, h);
    *cr = *chosen ? reals.lookup(chosen) : 0;
    lc_pick(svc, 0, lc_h, chosen, cr);
}

/* Does the template (ps) already say this (real id at addr, refreshed within
 * PERSIST_REFRESH_NS)? Then a new flow of the client need not rewrite it: an LRU
 * hash update costs about as much as the rest of the SYN's path. */
LB_INLINE bool persist_recent(const struct persist_state *ps, __u32 id, __be32 addr, __u64 now)
{
    return ps && ps->real == id && ps->addr == addr && now - ps->last_ns < PERSIST_REFRESH_NS;
}

/* A new flow (or a rescheduled one) of svc: persistence template or Maglev table
 * (fh: the flow's flow_hash()). Fills id and r; returns FURTHER_PROCESSING or a
 * verdict. The caller inserts the conntrack entry. */
LB_INLINE int schedule(const struct service *svc, const struct packet *p, __u32 *id,
                       struct real **r, __u32 fh)
{
    __u32 chosen = 0;
    struct real *cr = 0;
    if (feature_persist() && (svc->flags & SVC_F_PERSIST)) {
        struct persist_key pk = {.service = svc->index, .client = p->flow.saddr & svc->pmask};
        struct persist_state *ps = persist.lookup(&pk);
        __u64 now = bpf_ktime_get_ns();
        persist_take(svc, ps, now, &chosen, &cr);
        if (!chosen) {
            __u32 h = addr_hash(pk.client);
            table_pick(svc, h, h, &chosen, &cr);
        }
        if (cr && cr->addr && !persist_recent(ps, chosen, cr->addr, now)) {
            struct persist_state fresh = {.real = chosen, .addr = cr->addr, .last_ns = now};
            persist.update(&pk, &fresh);
        }
    } else {
        __u32 h = schedule_hash(svc, p, fh);
        table_pick(svc, h, feature_dh() && (svc->flags & SVC_F_HASH_DST) ? fh : h, &chosen, &cr);
    }
    if (!cr || !cr->addr || (cr->flags & REAL_F_FAILED))
        return verdict(G_DROP_NO_REAL, XDP_DROP);
    *id = chosen;
    *r = cr;
    return FURTHER_PROCESSING;
}

/* Does the client's template (ps) need no write for a packet of a flow on real id?
 * It points at id and was refreshed within PERSIST_REFRESH_NS, or it points
 * elsewhere and is alive (then it is left alone). */
LB_INLINE bool persist_fresh(const struct service *svc, const struct persist_state *ps,
                             __u32 id, __u64 now)
{
    if (ps && ps->real == id && now - ps->last_ns < PERSIST_REFRESH_NS)
        return true;
    return ps && ps->real != id && now - ps->last_ns < (__u64)svc->persist_s * 1000000000ull;
}

/* a packet of a tracked flow keeps its client's persistence template alive */
LB_INLINE void persist_touch(const struct service *svc, const struct packet *p,
                             __u32 id, const struct real *r)
{
    if (!(feature_persist() && (svc->flags & SVC_F_PERSIST)))
        return;
    struct persist_key pk = {.service = svc->index, .client = p->flow.saddr & svc->pmask};
    __u64 now = bpf_ktime_get_ns();
    if (persist_fresh(svc, persist.lookup(&pk), id, now))
        return;
    struct persist_state fresh = {.real = id, .addr = r->addr, .last_ns = now};
    persist.update(&pk, &fresh);
}

LB_INLINE void account(__u32 svc_index, __u32 real_id, const struct packet *p, bool new_flow)
{
    struct counters *c = service_stats.lookup(&svc_index);
    if (c) {
        c->packets += 1;
        c->bytes += p->len;
        c->new_flows += new_flow;
    }
    c = real_stats.lookup(&real_id);
    if (c) {
        c->packets += 1;
        c->bytes += p->len;
        c->new_flows += new_flow;
    }
}
