/* scheduling.h: choosing the real server of a packet.
 *   1. a tracked flow (conntrack) keeps its real server unless that server failed;
 *      a SYN always starts a new flow;
 *   2. persistent services: a live template for the masked source address wins;
 *   3. otherwise the service's Maglev table, indexed by a hash of the 5-tuple
 *      (rr/wrr and the approximated schedulers), of the source address (sh, and
 *      persistent services) or of the destination address (dh).
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
        if (ps && now - ps->last_ns < (__u64)svc->persist_s * 1000000000ull) {
            __u32 pid = ps->real;
            struct real *pr = reals.lookup(&pid);
            if (real_usable(pr, ps->addr) && !(pr->flags & REAL_F_QUIESCED)) {
                chosen = pid;
                cr = pr;
                count(G_PERSIST_HIT);
            }
        }
        if (!chosen) {
            chosen = table_lookup(svc, p, addr_hash(pk.client));
            cr = chosen ? reals.lookup(&chosen) : 0;
        }
        if (cr && cr->addr) {
            struct persist_state fresh = {.real = chosen, .addr = cr->addr, .last_ns = now};
            persist.update(&pk, &fresh);
        }
    } else {
        chosen = table_lookup(svc, p, schedule_hash(svc, p, fh));
        cr = chosen ? reals.lookup(&chosen) : 0;
    }
    if (!cr || !cr->addr || (cr->flags & REAL_F_FAILED))
        return verdict(G_DROP_NO_REAL, XDP_DROP);
    *id = chosen;
    *r = cr;
    return FURTHER_PROCESSING;
}

/* a packet of a tracked flow keeps its client's persistence template alive */
LB_INLINE void persist_touch(const struct service *svc, const struct packet *p,
                             __u32 id, const struct real *r)
{
    if (!(feature_persist() && (svc->flags & SVC_F_PERSIST)))
        return;
    struct persist_key pk = {.service = svc->index, .client = p->flow.saddr & svc->pmask};
    struct persist_state *ps = persist.lookup(&pk);
    __u64 now = bpf_ktime_get_ns();
    if (ps && ps->real == id && now - ps->last_ns < PERSIST_REFRESH_NS)
        return;
    if (ps && ps->real != id && now - ps->last_ns < (__u64)svc->persist_s * 1000000000ull)
        return; /* the client's template points elsewhere and is alive: leave it */
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
