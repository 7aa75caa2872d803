# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The matching core: one instrument's order book on C structures.

Orders live in a pool with a free list; each price level of the band keeps an intrusive FIFO
of its orders; a two-level bitmap finds the next non-empty level; an open-addressing map goes
from order id to pool slot. Events are written as packed int64 records into a buffer.

The rules are those of the pure-Python reference book (engine/book.py documents them); the
property tests hold the two to the same event stream.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef extern from *:
    int ctz64 "__builtin_ctzll"(unsigned long long) nogil
    int clz64 "__builtin_clzll"(unsigned long long) nogil

# Values of the enums in engine/messages.py (tests check that both agree).
cdef enum:
    BUY = 0
    SELL = 1
    T_LIMIT = 0
    T_MARKET = 1
    T_STOP_LIMIT = 2
    T_STOP_MARKET = 3
    GTC = 0
    IOC = 1
    FOK = 2
    GTD = 3
    STP_CANCEL_NEWEST = 0
    STP_CANCEL_OLDEST = 1
    STP_CANCEL_BOTH = 2
    STP_DECREMENT = 3
    C_USER = 0
    C_IOC_REMAINDER = 1
    C_FOK = 2
    C_STP = 3
    C_EXPIRED = 4
    C_MASS_CANCEL = 5
    C_POST_ONLY = 6
    R_DUPLICATE_ORDER_ID = 1
    R_INVALID_QUANTITY = 2
    R_INVALID_PRICE = 3
    R_PRICE_OUT_OF_BAND = 4
    R_INVALID_ORDER = 5
    R_INVALID_EXPIRY = 6
    R_UNKNOWN_ORDER = 7
    R_NOT_AMENDABLE = 8
    R_WOULD_CROSS = 9

cdef int64_t MAX_QTY_LOTS = 1 << 40  # engine.messages.MAX_QTY: sums stay inside int64
MAX_QTY = MAX_QTY_LOTS
MAX_LEVELS = 1 << 24  # a band wider than this many ticks is refused

# The packed record layouts, for engine/wire.py.
COMMAND_WORDS = CMD_WORDS
EVENT_WORDS = EV_WORDS
COMMAND_KINDS = {
    "new_order": CMD_NEW_ORDER,
    "cancel": CMD_CANCEL,
    "amend": CMD_AMEND,
    "mass_cancel": CMD_MASS_CANCEL,
    "expire_orders": CMD_EXPIRE,
}
EVENT_KINDS = {
    "accepted": EV_ACCEPTED,
    "rejected": EV_REJECTED,
    "fill": EV_FILL,
    "cancelled": EV_CANCELLED,
    "amended": EV_AMENDED,
    "triggered": EV_TRIGGERED,
    "book_level": EV_BOOK_LEVEL,
}
ENUMS = {
    "Side": {"BUY": BUY, "SELL": SELL},
    "OrderType": {"LIMIT": T_LIMIT, "MARKET": T_MARKET, "STOP_LIMIT": T_STOP_LIMIT,
                  "STOP_MARKET": T_STOP_MARKET},
    "TimeInForce": {"GTC": GTC, "IOC": IOC, "FOK": FOK, "GTD": GTD},
    "SelfTradePrevention": {"CANCEL_NEWEST": STP_CANCEL_NEWEST,
                            "CANCEL_OLDEST": STP_CANCEL_OLDEST,
                            "CANCEL_BOTH": STP_CANCEL_BOTH, "DECREMENT": STP_DECREMENT},
    "CancelReason": {"USER": C_USER, "IOC_REMAINDER": C_IOC_REMAINDER, "FOK": C_FOK,
                     "STP": C_STP, "EXPIRED": C_EXPIRED, "MASS_CANCEL": C_MASS_CANCEL,
                     "POST_ONLY": C_POST_ONLY},
    "RejectReason": {"DUPLICATE_ORDER_ID": R_DUPLICATE_ORDER_ID,
                     "INVALID_QUANTITY": R_INVALID_QUANTITY, "INVALID_PRICE": R_INVALID_PRICE,
                     "PRICE_OUT_OF_BAND": R_PRICE_OUT_OF_BAND, "INVALID_ORDER": R_INVALID_ORDER,
                     "INVALID_EXPIRY": R_INVALID_EXPIRY, "UNKNOWN_ORDER": R_UNKNOWN_ORDER,
                     "NOT_AMENDABLE": R_NOT_AMENDABLE, "WOULD_CROSS": R_WOULD_CROSS},
}

cdef inline uint64_t bit(int64_t i) noexcept nogil:
    return (<uint64_t>1) << (i & 63)


cdef inline void ladder_set(Ladder* lad, int64_t i) noexcept nogil:
    cdef int64_t w = i >> 6
    lad.bits[w] |= bit(i)
    lad.summary[w >> 6] |= bit(w)


cdef inline void ladder_clear(Ladder* lad, int64_t i) noexcept nogil:
    cdef int64_t w = i >> 6
    lad.bits[w] &= ~bit(i)
    if lad.bits[w] == 0:
        lad.summary[w >> 6] &= ~bit(w)


cdef inline int64_t ladder_next(Ladder* lad, int64_t i, int64_t n_words) noexcept nogil:
    """Lowest non-empty level at or above i, or -1."""
    cdef int64_t w = i >> 6
    cdef uint64_t word, summ
    if w >= n_words:
        return -1
    word = lad.bits[w] & (~(<uint64_t>0) << (i & 63))
    if word:
        return (w << 6) + ctz64(word)
    w += 1
    if w >= n_words:
        return -1
    cdef int64_t s = w >> 6
    cdef int64_t n_summary = (n_words + 63) >> 6
    summ = lad.summary[s] & (~(<uint64_t>0) << (w & 63))
    while True:
        if summ:
            w = (s << 6) + ctz64(summ)
            return (w << 6) + ctz64(lad.bits[w])
        s += 1
        if s >= n_summary:
            return -1
        summ = lad.summary[s]


cdef inline int64_t ladder_prev(Ladder* lad, int64_t i) noexcept nogil:
    """Highest non-empty level at or below i, or -1."""
    cdef int64_t w
    cdef uint64_t word, summ
    if i < 0:
        return -1
    w = i >> 6
    word = lad.bits[w] & (~(<uint64_t>0) >> (63 - (i & 63)))
    if word:
        return (w << 6) + 63 - clz64(word)
    if w == 0:
        return -1
    w -= 1
    cdef int64_t s = w >> 6
    summ = lad.summary[s] & (~(<uint64_t>0) >> (63 - (w & 63)))
    while True:
        if summ:
            w = (s << 6) + 63 - clz64(summ)
            return (w << 6) + 63 - clz64(lad.bits[w])
        if s == 0:
            return -1
        s -= 1
        summ = lad.summary[s]


cdef inline uint64_t mix(int64_t key) noexcept nogil:
    return (<uint64_t>key) * <uint64_t>0x9E3779B97F4A7C15ULL


cdef int compare_ids(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0]
    cdef int64_t y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return t.tv_sec * 1000000000 + t.tv_nsec


cdef class MatchingCore:
    """One instrument's order book over the price band ``[min_price, max_price]`` (ticks).

    Per-command methods (`new_order`, `cancel`, `amend`, `mass_cancel`, `expire`) return the
    number of events the command caused; `events` reads them. `apply_batch` runs a packed
    buffer of commands in one call.
    """

    cdef readonly int64_t min_price
    cdef readonly int64_t max_price
    cdef int64_t n_levels
    cdef int64_t n_words
    cdef Ladder ladder[2]
    # order pool with a free list
    cdef Order* pool
    cdef int32_t pool_cap
    cdef int32_t free_head
    # open-addressing map: order id -> pool slot
    cdef int64_t* map_keys
    cdef int32_t* map_vals
    cdef uint64_t map_mask
    cdef int64_t map_count
    cdef int map_shift
    # pending stops in entry order
    cdef Level stops  # the same intrusive list a price level keeps (qty unused)
    # min-heap of (expire_ts, order_id) for GTD orders, stale entries skipped lazily
    cdef int64_t* heap_ts
    cdef int64_t* heap_id
    cdef int64_t heap_n
    cdef int64_t heap_cap
    # trading state
    cdef readonly int64_t last_price
    cdef readonly int64_t next_trade_id
    cdef bint traded
    # event buffer and per-command event ends of the last batch
    cdef int64_t* ev
    cdef int64_t ev_n
    cdef int64_t ev_cap
    cdef int64_t* ends
    cdef int64_t ends_cap
    cdef int64_t batch_n

    def __cinit__(self, int64_t min_price, int64_t max_price):
        cdef int side
        if min_price <= 0 or max_price < min_price or max_price - min_price >= MAX_LEVELS:
            raise ValueError(f"bad price band [{min_price}, {max_price}]")
        self.min_price = min_price
        self.max_price = max_price
        self.n_levels = max_price - min_price + 1
        self.n_words = (self.n_levels + 63) >> 6
        for side in range(2):
            self.ladder[side].levels = <Level*>malloc(self.n_levels * sizeof(Level))
            self.ladder[side].bits = <uint64_t*>calloc(self.n_words, sizeof(uint64_t))
            self.ladder[side].summary = <uint64_t*>calloc(
                (self.n_words + 63) >> 6, sizeof(uint64_t))
            self.ladder[side].best = -1
            if (not self.ladder[side].levels or not self.ladder[side].bits
                    or not self.ladder[side].summary):
                raise MemoryError()
            for i in range(self.n_levels):
                self.ladder[side].levels[i].head = -1
                self.ladder[side].levels[i].tail = -1
                self.ladder[side].levels[i].qty = 0
        self.pool = NULL
        self.pool_cap = 0
        self.free_head = -1
        self.grow_pool()
        self.map_shift = 64 - 12
        self.map_mask = (1 << 12) - 1
        self.map_keys = <int64_t*>calloc(self.map_mask + 1, sizeof(int64_t))
        self.map_vals = <int32_t*>malloc((self.map_mask + 1) * sizeof(int32_t))
        self.map_count = 0
        self.stops.head = -1
        self.stops.tail = -1
        self.stops.qty = 0
        self.heap_cap = 64
        self.heap_n = 0
        self.heap_ts = <int64_t*>malloc(self.heap_cap * sizeof(int64_t))
        self.heap_id = <int64_t*>malloc(self.heap_cap * sizeof(int64_t))
        self.last_price = 0
        self.next_trade_id = 1
        self.traded = False
        self.ev_cap = 1024 * EV_WORDS
        self.ev = <int64_t*>malloc(self.ev_cap * sizeof(int64_t))
        self.ev_n = 0
        self.ends_cap = 0
        self.ends = NULL
        if (not self.map_keys or not self.map_vals or not self.heap_ts or not self.heap_id
                or not self.ev):
            raise MemoryError()

    def __dealloc__(self):
        cdef int side
        for side in range(2):
            free(self.ladder[side].levels)
            free(self.ladder[side].bits)
            free(self.ladder[side].summary)
        free(self.pool)
        free(self.map_keys)
        free(self.map_vals)
        free(self.heap_ts)
        free(self.heap_id)
        free(self.ev)
        free(self.ends)

    # --- storage ----------------------------------------------------------------------------

    cdef int grow_pool(self) except -1:
        cdef int32_t old = self.pool_cap
        cdef int32_t cap = old * 2 if old else 1024
        cdef Order* pool = <Order*>realloc(self.pool, cap * sizeof(Order))
        if not pool:
            raise MemoryError()
        memset(pool + old, 0, (cap - old) * sizeof(Order))
        for i in range(old, cap - 1):
            pool[i].next = i + 1
        pool[cap - 1].next = self.free_head
        self.free_head = old
        self.pool = pool
        self.pool_cap = cap
        return 0

    cdef inline int32_t alloc(self) except -1:
        if self.free_head < 0:
            self.grow_pool()
        cdef int32_t s = self.free_head
        self.free_head = self.pool[s].next
        return s

    cdef inline void retire(self, int32_t s) noexcept:
        """Return a slot to the free list, dropping its id from the map."""
        cdef Order* o = &self.pool[s]
        if o.in_map:
            self.map_del(o.order_id)
        o.in_map = 0
        o.slot = SLOT_FREE
        o.next = self.free_head
        self.free_head = s

    cdef inline int32_t map_get(self, int64_t key) noexcept:
        cdef uint64_t h
        cdef int64_t k
        if key <= 0:
            return -1
        h = mix(key) >> self.map_shift
        while True:
            k = self.map_keys[h]
            if k == key:
                return self.map_vals[h]
            if k == 0:
                return -1
            h = (h + 1) & self.map_mask

    cdef int map_put(self, int64_t key, int32_t val) except -1:
        cdef uint64_t h
        if (self.map_count + 1) * 2 > <int64_t>(self.map_mask + 1):
            self.grow_map()
        h = mix(key) >> self.map_shift
        while self.map_keys[h] != 0:
            h = (h + 1) & self.map_mask
        self.map_keys[h] = key
        self.map_vals[h] = val
        self.map_count += 1
        return 0

    cdef int grow_map(self) except -1:
        cdef int64_t* old_keys = self.map_keys
        cdef int32_t* old_vals = self.map_vals
        cdef uint64_t old_size = self.map_mask + 1
        cdef uint64_t size = old_size * 2
        cdef uint64_t h
        cdef int64_t* keys = <int64_t*>calloc(size, sizeof(int64_t))
        cdef int32_t* vals = <int32_t*>malloc(size * sizeof(int32_t))
        if not keys or not vals:
            free(keys)
            free(vals)
            raise MemoryError()
        self.map_keys = keys
        self.map_vals = vals
        self.map_mask = size - 1
        self.map_shift -= 1
        for i in range(old_size):
            if old_keys[i] != 0:
                h = mix(old_keys[i]) >> self.map_shift
                while self.map_keys[h] != 0:
                    h = (h + 1) & self.map_mask
                self.map_keys[h] = old_keys[i]
                self.map_vals[h] = old_vals[i]
        free(old_keys)
        free(old_vals)
        return 0

    cdef void map_del(self, int64_t key) noexcept:
        """Remove a key, shifting later entries of its probe run back (no tombstones)."""
        cdef uint64_t i = mix(key) >> self.map_shift
        cdef uint64_t j, home
        while self.map_keys[i] != key:
            i = (i + 1) & self.map_mask
        j = i
        while True:
            j = (j + 1) & self.map_mask
            if self.map_keys[j] == 0:
                break
            home = mix(self.map_keys[j]) >> self.map_shift
            # the entry at j may move to i only if its home is not in the run (i, j]
            if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue
            self.map_keys[i] = self.map_keys[j]
            self.map_vals[i] = self.map_vals[j]
            i = j
        self.map_keys[i] = 0
        self.map_count -= 1

    cdef inline int emit(self, int64_t kind, int64_t a, int64_t b, int64_t c, int64_t d,
                         int64_t e, int64_t f, int64_t g, int64_t h, int64_t i,
                         int64_t j) except -1:
        cdef int64_t* p
        if self.ev_n + EV_WORDS > self.ev_cap:
            p = <int64_t*>realloc(self.ev, self.ev_cap * 2 * sizeof(int64_t))
            if not p:
                raise MemoryError()
            self.ev = p
            self.ev_cap *= 2
        p = self.ev + self.ev_n
        p[0] = kind
        p[1] = a
        p[2] = b
        p[3] = c
        p[4] = d
        p[5] = e
        p[6] = f
        p[7] = g
        p[8] = h
        p[9] = i
        p[10] = j
        self.ev_n += EV_WORDS
        return 0

    # --- GTD expiry heap ----------------------------------------------------------------------

    cdef inline bint heap_less(self, int64_t a, int64_t b) noexcept:
        return (self.heap_ts[a] < self.heap_ts[b]
                or (self.heap_ts[a] == self.heap_ts[b] and self.heap_id[a] < self.heap_id[b]))

    cdef inline void heap_swap(self, int64_t a, int64_t b) noexcept:
        self.heap_ts[a], self.heap_ts[b] = self.heap_ts[b], self.heap_ts[a]
        self.heap_id[a], self.heap_id[b] = self.heap_id[b], self.heap_id[a]

    cdef void heap_sift_down(self, int64_t i) noexcept:
        cdef int64_t child
        while True:
            child = 2 * i + 1
            if child >= self.heap_n:
                return
            if child + 1 < self.heap_n and self.heap_less(child + 1, child):
                child += 1
            if not self.heap_less(child, i):
                return
            self.heap_swap(i, child)
            i = child

    cdef int heap_push(self, int64_t ts, int64_t order_id) except -1:
        cdef int64_t i, parent
        if self.heap_n > 2 * self.map_count + 64:
            self.heap_compact()
        cdef int64_t* grown
        if self.heap_n == self.heap_cap:
            grown = <int64_t*>realloc(self.heap_ts, self.heap_cap * 2 * sizeof(int64_t))
            if not grown:
                raise MemoryError()
            self.heap_ts = grown
            grown = <int64_t*>realloc(self.heap_id, self.heap_cap * 2 * sizeof(int64_t))
            if not grown:
                raise MemoryError()
            self.heap_id = grown
            self.heap_cap *= 2
        i = self.heap_n
        self.heap_ts[i] = ts
        self.heap_id[i] = order_id
        self.heap_n += 1
        while i > 0:
            parent = (i - 1) >> 1
            if not self.heap_less(i, parent):
                break
            self.heap_swap(i, parent)
            i = parent
        return 0

    cdef void heap_pop(self) noexcept:
        self.heap_n -= 1
        self.heap_ts[0] = self.heap_ts[self.heap_n]
        self.heap_id[0] = self.heap_id[self.heap_n]
        self.heap_sift_down(0)

    cdef inline bint heap_entry_live(self, int64_t i) noexcept:
        cdef int32_t s = self.map_get(self.heap_id[i])
        return s >= 0 and self.pool[s].tif == GTD and self.pool[s].expire_ts == self.heap_ts[i]

    cdef void heap_compact(self) noexcept:
        """Drop entries of orders that are gone, so cancelled GTD orders cost no memory."""
        cdef int64_t i, kept = 0
        for i in range(self.heap_n):
            if self.heap_entry_live(i):
                self.heap_ts[kept] = self.heap_ts[i]
                self.heap_id[kept] = self.heap_id[i]
                kept += 1
        self.heap_n = kept
        for i in range(kept // 2 - 1, -1, -1):
            self.heap_sift_down(i)

    cdef int expire(self, int64_t ts) except -1:
        cdef int32_t s
        cdef bint live
        while self.heap_n and self.heap_ts[0] < ts:
            live = self.heap_entry_live(0)
            s = self.map_get(self.heap_id[0])
            self.heap_pop()
            if live:
                self.drop(s, C_EXPIRED)
        return 0

    # --- levels -------------------------------------------------------------------------------

    cdef inline void queue_push(self, Level* lv, int32_t s) noexcept:
        cdef Order* pool = self.pool
        pool[s].next = -1
        pool[s].prev = lv.tail
        if lv.tail >= 0:
            pool[lv.tail].next = s
        else:
            lv.head = s
        lv.tail = s

    cdef inline void queue_unlink(self, Level* lv, int32_t s) noexcept:
        cdef Order* pool = self.pool
        cdef int32_t p = pool[s].prev
        cdef int32_t n = pool[s].next
        if p >= 0:
            pool[p].next = n
        else:
            lv.head = n
        if n >= 0:
            pool[n].prev = p
        else:
            lv.tail = p

    cdef inline void level_emptied(self, int side, int64_t idx) noexcept:
        cdef Ladder* lad = &self.ladder[side]
        ladder_clear(lad, idx)
        if lad.best == idx:
            if side == BUY:
                lad.best = ladder_prev(lad, idx - 1)
            else:
                lad.best = ladder_next(lad, idx + 1, self.n_words)

    cdef int rest(self, int32_t s) except -1:
        cdef Order* o = &self.pool[s]
        o.shown = o.remaining if o.display_qty == 0 or o.display_qty > o.remaining \
            else o.display_qty
        self.link_resting(s)
        self.emit(EV_BOOK_LEVEL, o.side, o.price,
                  self.ladder[o.side].levels[o.price - self.min_price].qty, 0, 0, 0, 0, 0, 0, 0)
        return 0

    cdef int link_resting(self, int32_t s) except -1:
        """Put an order (its shown slice set) at the back of its level and into the id map."""
        cdef Order* o = &self.pool[s]
        cdef int side = o.side
        cdef int64_t idx = o.price - self.min_price
        cdef Ladder* lad = &self.ladder[side]
        cdef Level* lv = &lad.levels[idx]
        if lv.head < 0:
            ladder_set(lad, idx)
            if lad.best < 0 or (idx > lad.best if side == BUY else idx < lad.best):
                lad.best = idx
        self.queue_push(lv, s)
        lv.qty += o.shown
        o.slot = SLOT_RESTING
        if not o.in_map:
            self.map_put(o.order_id, s)
            o.in_map = 1
            if o.tif == GTD:
                self.heap_push(o.expire_ts, o.order_id)
        return 0

    cdef int unlink_resting(self, int32_t s) except -1:
        """Take a resting order out of its level (it stays live) and report the level."""
        cdef Order* o = &self.pool[s]
        cdef int64_t idx = o.price - self.min_price
        cdef Level* lv = &self.ladder[o.side].levels[idx]
        self.queue_unlink(lv, s)
        lv.qty -= o.shown
        if lv.head < 0:
            self.level_emptied(o.side, idx)
        self.emit(EV_BOOK_LEVEL, o.side, o.price, lv.qty, 0, 0, 0, 0, 0, 0, 0)
        return 0

    cdef int drop(self, int32_t s, int64_t reason) except -1:
        """Cancel a live order whole, wherever it is."""
        cdef Order* o = &self.pool[s]
        self.emit(EV_CANCELLED, o.order_id, o.account, reason, o.remaining, 0, 0, 0, 0, 0, 0)
        if o.slot == SLOT_STOP:
            self.queue_unlink(&self.stops, s)
        else:
            self.unlink_resting(s)
        self.retire(s)
        return 0

    # --- matching -------------------------------------------------------------------------

    cdef inline bint crosses(self, int side, int64_t price) noexcept:
        cdef int64_t best
        if side == BUY:
            best = self.ladder[SELL].best
            return best >= 0 and best + self.min_price <= price
        best = self.ladder[BUY].best
        return best >= 0 and best + self.min_price >= price

    cdef int execute(self, int32_t s) except -1:
        """Match an incoming (or re-entering) order, then rest or cancel what is left."""
        cdef Order* o = &self.pool[s]
        cdef int64_t limit
        if o.order_type == T_MARKET or o.order_type == T_STOP_MARKET:
            limit = self.max_price if o.side == BUY else self.min_price
        else:
            limit = o.price
        if o.tif == FOK and not self.fok_fillable(s, limit):
            return self.forget(s, C_FOK)
        if o.post_only and self.crosses(o.side, limit):
            return self.forget(s, C_POST_ONLY)
        if self.match(s, limit) or o.remaining == 0:
            self.retire(s)
            return 0
        if o.tif == IOC or o.tif == FOK:
            return self.forget(s, C_IOC_REMAINDER)
        return self.rest(s)

    cdef int forget(self, int32_t s, int64_t reason) except -1:
        cdef Order* o = &self.pool[s]
        self.emit(EV_CANCELLED, o.order_id, o.account, reason, o.remaining, 0, 0, 0, 0, 0, 0)
        self.retire(s)
        return 0

    cdef bint fok_fillable(self, int32_t t, int64_t limit) noexcept:
        cdef Order* pool = self.pool
        cdef int side = pool[t].side
        cdef int opp = 1 - side
        cdef Ladder* lad = &self.ladder[opp]
        cdef int64_t idx = lad.best
        cdef int64_t price, available = 0
        cdef int32_t m
        while idx >= 0:
            price = idx + self.min_price
            if (price > limit) if side == BUY else (price < limit):
                break
            m = lad.levels[idx].head
            while m >= 0:
                if pool[m].account == pool[t].account:
                    return False
                available += pool[m].remaining
                m = pool[m].next
            if available >= pool[t].remaining:
                return True
            if side == BUY:
                idx = ladder_next(lad, idx + 1, self.n_words)
            else:
                idx = ladder_prev(lad, idx - 1)
        return False

    cdef inline bint take(self, int32_t m, Level* lv, int64_t qty) noexcept:
        """Take qty off a maker's shown slice; refresh an iceberg or remove the order.

        Returns True when the maker left the book.
        """
        cdef Order* o = &self.pool[m]
        o.shown -= qty
        o.remaining -= qty
        lv.qty -= qty
        if o.shown:
            return False
        if o.remaining:
            o.shown = o.remaining if o.display_qty > o.remaining else o.display_qty
            self.queue_unlink(lv, m)
            self.queue_push(lv, m)
            lv.qty += o.shown
            return False
        self.queue_unlink(lv, m)
        self.retire(m)
        return True

    cdef bint match(self, int32_t t, int64_t limit) except -1:
        """Trade order t against the other side up to limit.

        Returns True when self-trade prevention cancelled the rest of t.
        """
        cdef Order* pool = self.pool
        cdef Order* taker = &pool[t]
        cdef int side = taker.side
        cdef int opp = 1 - side
        cdef Ladder* lad = &self.ladder[opp]
        cdef Level* lv
        cdef int64_t idx, price, qty, qty_before, maker_id, maker_account
        cdef int32_t m
        cdef bint stopped = False
        cdef int mode
        while taker.remaining:
            idx = lad.best
            if idx < 0:
                break
            price = idx + self.min_price
            if (price > limit) if side == BUY else (price < limit):
                break
            lv = &lad.levels[idx]
            qty_before = lv.qty
            while taker.remaining and lv.head >= 0:
                m = lv.head
                maker_id = pool[m].order_id
                maker_account = pool[m].account
                if maker_account == taker.account:
                    mode = taker.stp
                    if mode == STP_CANCEL_OLDEST or mode == STP_CANCEL_BOTH:
                        self.queue_unlink(lv, m)
                        lv.qty -= pool[m].shown
                        self.emit(EV_CANCELLED, maker_id, maker_account, C_STP,
                                  pool[m].remaining, 0, 0, 0, 0, 0, 0)
                        self.retire(m)
                    if mode == STP_CANCEL_NEWEST or mode == STP_CANCEL_BOTH:
                        self.emit(EV_CANCELLED, taker.order_id, taker.account, C_STP,
                                  taker.remaining, 0, 0, 0, 0, 0, 0)
                        taker.remaining = 0
                        stopped = True
                        break
                    if mode == STP_DECREMENT:
                        qty = taker.remaining if taker.remaining < pool[m].shown \
                            else pool[m].shown
                        taker.remaining -= qty
                        if self.take(m, lv, qty):
                            self.emit(EV_CANCELLED, maker_id, maker_account, C_STP, qty, 0,
                                      0, 0, 0, 0, 0)
                        else:
                            self.emit(EV_CANCELLED, maker_id, maker_account, C_STP, qty,
                                      pool[m].remaining, 0, 0, 0, 0, 0)
                        self.emit(EV_CANCELLED, taker.order_id, taker.account, C_STP, qty,
                                  taker.remaining, 0, 0, 0, 0, 0)
                    continue
                qty = taker.remaining if taker.remaining < pool[m].shown else pool[m].shown
                taker.remaining -= qty
                if self.take(m, lv, qty):
                    self.emit(EV_FILL, self.next_trade_id, price, qty, side, maker_id,
                              taker.order_id, maker_account, taker.account, 0,
                              taker.remaining)
                else:
                    self.emit(EV_FILL, self.next_trade_id, price, qty, side, maker_id,
                              taker.order_id, maker_account, taker.account,
                              pool[m].remaining, taker.remaining)
                self.next_trade_id += 1
                self.last_price = price
                self.traded = True
            if lv.qty != qty_before:
                self.emit(EV_BOOK_LEVEL, opp, price, lv.qty, 0, 0, 0, 0, 0, 0, 0)
            if lv.head < 0:
                self.level_emptied(opp, idx)
            if stopped:
                return True
        return False

    # --- stops ------------------------------------------------------------------------------

    cdef inline bint stop_reached(self, int32_t s) noexcept:
        cdef Order* o = &self.pool[s]
        if self.last_price == 0:
            return False
        if o.side == BUY:
            return self.last_price >= o.stop_price
        return self.last_price <= o.stop_price

    cdef int trigger_stops(self) except -1:
        cdef int32_t s
        while self.traded:
            self.traded = False
            s = self.stops.head
            while s >= 0:
                if self.stop_reached(s):
                    self.queue_unlink(&self.stops, s)
                    self.pool[s].slot = SLOT_INFLIGHT
                    self.emit(EV_TRIGGERED, self.pool[s].order_id, self.pool[s].account,
                              self.pool[s].stop_price, 0, 0, 0, 0, 0, 0, 0)
                    self.execute(s)
                    self.traded = True  # look again from the oldest stop
                    break
                s = self.pool[s].next
        return 0

    # --- commands ---------------------------------------------------------------------------

    cdef inline int64_t check_price(self, int64_t price) noexcept:
        if price <= 0:
            return R_INVALID_PRICE
        if price < self.min_price or price > self.max_price:
            return R_PRICE_OUT_OF_BAND
        return 0

    cdef int64_t validate(self, const int64_t* c) noexcept:
        cdef int64_t ts = c[1], order_id = c[2], side = c[4], price = c[5], qty = c[6]
        cdef int64_t order_type = c[7], tif = c[8], post_only = c[9], display_qty = c[10]
        cdef int64_t stop_price = c[11], expire_ts = c[12], stp = c[13]
        cdef bint is_market, is_stop, rests
        cdef int64_t reason
        if (order_id <= 0 or not 0 <= side <= 1 or not 0 <= order_type <= 3
                or not 0 <= tif <= 3 or not 0 <= stp <= 3 or not 0 <= post_only <= 1):
            return R_INVALID_ORDER
        if self.map_get(order_id) >= 0:
            return R_DUPLICATE_ORDER_ID
        if qty <= 0 or qty > MAX_QTY_LOTS or display_qty < 0 or display_qty > qty:
            return R_INVALID_QUANTITY
        is_market = order_type == T_MARKET or order_type == T_STOP_MARKET
        is_stop = order_type == T_STOP_LIMIT or order_type == T_STOP_MARKET
        rests = tif == GTC or tif == GTD
        if is_market and rests:
            return R_INVALID_ORDER
        if (post_only or display_qty) and (is_stop or is_market or not rests):
            return R_INVALID_ORDER
        if (tif == GTD) != (expire_ts != 0):
            return R_INVALID_ORDER
        if not is_market:
            reason = self.check_price(price)
            if reason:
                return reason
        if is_stop:
            reason = self.check_price(stop_price)
            if reason:
                return reason
        if tif == GTD and expire_ts < ts:
            return R_INVALID_EXPIRY
        return 0

    cdef int new_order_c(self, const int64_t* c) except -1:
        cdef int64_t reason = self.validate(c)
        cdef int32_t s
        cdef Order* o
        if reason:
            return self.emit(EV_REJECTED, c[2], c[3], reason, 0, 0, 0, 0, 0, 0, 0)
        s = self.alloc()
        o = &self.pool[s]
        o.order_id = c[2]
        o.account = c[3]
        o.side = <int>c[4]
        o.price = c[5]
        o.remaining = c[6]
        o.order_type = <int>c[7]
        o.tif = <int>c[8]
        o.post_only = <int>c[9]
        o.display_qty = c[10]
        o.stop_price = c[11]
        o.expire_ts = c[12]
        o.stp = <int>c[13]
        o.shown = 0
        o.in_map = 0
        o.slot = SLOT_INFLIGHT
        self.emit(EV_ACCEPTED, o.order_id, o.account, o.side, o.order_type, o.price,
                  o.remaining, 0, 0, 0, 0)
        if o.order_type == T_STOP_LIMIT or o.order_type == T_STOP_MARKET:
            if not self.stop_reached(s):
                o.slot = SLOT_STOP
                self.queue_push(&self.stops, s)
                self.map_put(o.order_id, s)
                o.in_map = 1
                if o.tif == GTD:
                    self.heap_push(o.expire_ts, o.order_id)
                return 0
            self.emit(EV_TRIGGERED, o.order_id, o.account, o.stop_price, 0, 0, 0, 0, 0, 0, 0)
        return self.execute(s)

    cdef int cancel_c(self, int64_t order_id, int64_t account) except -1:
        cdef int32_t s = self.map_get(order_id)
        if s < 0 or self.pool[s].account != account:
            return self.emit(EV_REJECTED, order_id, account, R_UNKNOWN_ORDER,
                             0, 0, 0, 0, 0, 0, 0)
        return self.drop(s, C_USER)

    cdef int amend_c(self, int64_t order_id, int64_t account, int64_t price,
                     int64_t qty) except -1:
        cdef int32_t s = self.map_get(order_id)
        cdef int64_t reason = 0
        cdef int64_t shown
        cdef Order* o
        cdef Level* lv
        if s < 0 or self.pool[s].account != account:
            reason = R_UNKNOWN_ORDER
        elif self.pool[s].slot == SLOT_STOP:
            reason = R_NOT_AMENDABLE
        elif qty <= 0 or qty > MAX_QTY_LOTS:
            reason = R_INVALID_QUANTITY
        else:
            reason = self.check_price(price)
            if not reason and self.pool[s].post_only and self.crosses(self.pool[s].side, price):
                reason = R_WOULD_CROSS
        if reason:
            return self.emit(EV_REJECTED, order_id, account, reason, 0, 0, 0, 0, 0, 0, 0)
        o = &self.pool[s]
        if price == o.price and qty <= o.remaining:
            shown = o.shown if o.shown < qty else qty
            o.remaining = qty
            self.emit(EV_AMENDED, order_id, account, price, qty, 0, 0, 0, 0, 0, 0)
            if shown != o.shown:
                lv = &self.ladder[o.side].levels[price - self.min_price]
                lv.qty -= o.shown - shown
                o.shown = shown
                self.emit(EV_BOOK_LEVEL, o.side, price, lv.qty, 0, 0, 0, 0, 0, 0, 0)
            return 0
        self.emit(EV_AMENDED, order_id, account, price, qty, 0, 0, 0, 0, 0, 0)
        self.unlink_resting(s)
        o.price = price
        o.remaining = qty
        o.slot = SLOT_INFLIGHT
        return self.execute(s)

    cdef int mass_cancel_c(self, int64_t account, int64_t side) except -1:
        cdef int64_t* ids = <int64_t*>malloc((self.map_count + 1) * sizeof(int64_t))
        cdef int64_t n = 0, i
        cdef int32_t s
        if not ids:
            raise MemoryError()
        for s in range(self.pool_cap):
            if ((self.pool[s].slot == SLOT_RESTING or self.pool[s].slot == SLOT_STOP)
                    and self.pool[s].account == account
                    and (side < 0 or self.pool[s].side == side)):
                ids[n] = self.pool[s].order_id
                n += 1
        qsort(ids, n, sizeof(int64_t), compare_ids)
        try:
            for i in range(n):
                self.drop(self.map_get(ids[i]), C_MASS_CANCEL)
        finally:
            free(ids)
        return 0

    cdef int64_t _run(self, const int64_t* c) except -1:
        """Run one packed command: expiry first, then the command, then stop triggers."""
        cdef int64_t kind = c[0]
        self.expire(c[1])
        if kind == CMD_AMEND:
            self.amend_c(c[2], c[3], c[5], c[6])
        elif kind == CMD_NEW_ORDER:
            self.new_order_c(c)
        elif kind == CMD_CANCEL:
            self.cancel_c(c[2], c[3])
        elif kind == CMD_MASS_CANCEL:
            self.mass_cancel_c(c[3], c[4])
        elif kind != CMD_EXPIRE:
            raise ValueError(f"unknown command kind {kind}")
        if self.traded:
            self.trigger_stops()
        return 0

    # --- Python API: one call per command -------------------------------------------------

    def new_order(self, int64_t ts, int64_t order_id, int64_t account, int64_t side,
                  int64_t price, int64_t qty, int64_t order_type=T_LIMIT, int64_t tif=GTC,
                  int64_t post_only=0, int64_t display_qty=0, int64_t stop_price=0,
                  int64_t expire_ts=0, int64_t stp=STP_CANCEL_NEWEST) -> int:
        """Enter an order; returns the number of events (read them with `events`)."""
        cdef int64_t c[CMD_WORDS]
        c[0] = CMD_NEW_ORDER
        c[1] = ts
        c[2] = order_id
        c[3] = account
        c[4] = side
        c[5] = price
        c[6] = qty
        c[7] = order_type
        c[8] = tif
        c[9] = post_only
        c[10] = display_qty
        c[11] = stop_price
        c[12] = expire_ts
        c[13] = stp
        self.ev_n = 0
        self._run(c)
        return self.ev_n // EV_WORDS

    def cancel(self, int64_t ts, int64_t order_id, int64_t account) -> int:
        """Cancel one order; returns the number of events."""
        self.ev_n = 0
        self.expire(ts)
        self.cancel_c(order_id, account)
        return self.ev_n // EV_WORDS

    def amend(self, int64_t ts, int64_t order_id, int64_t account, int64_t price,
              int64_t qty) -> int:
        """Change a resting order's price and open quantity; returns the number of events."""
        self.ev_n = 0
        self.expire(ts)
        self.amend_c(order_id, account, price, qty)
        if self.traded:
            self.trigger_stops()
        return self.ev_n // EV_WORDS

    def mass_cancel(self, int64_t ts, int64_t account, int64_t side=-1) -> int:
        """Cancel all of an account's orders (side -1 = both sides); returns the event count."""
        self.ev_n = 0
        self.expire(ts)
        self.mass_cancel_c(account, side)
        return self.ev_n // EV_WORDS

    def expire_orders(self, int64_t ts) -> int:
        """Timer: expire GTD orders whose expire_ts is before ts; returns the event count."""
        self.ev_n = 0
        self.expire(ts)
        return self.ev_n // EV_WORDS

    def events(self) -> list:
        """The events of the last call as tuples ``(kind, field, ...)`` of EVENT_WORDS ints."""
        cdef int64_t i, n = self.ev_n
        cdef int64_t* p
        out = []
        for i in range(0, n, EV_WORDS):
            p = self.ev + i
            out.append((p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10]))
        return out

    # --- Python API: batches -------------------------------------------------------------

    def apply_batch(self, const int64_t[::1] commands) -> int:
        """Run every packed command of the buffer; returns the number of events written.

        Read them with `events` (or `event_words`); `command_ends` gives, per command, the
        number of events written up to and including it.
        """
        cdef int64_t n = commands.shape[0] // CMD_WORDS
        cdef int64_t i
        cdef const int64_t* c = &commands[0] if n else NULL
        if commands.shape[0] % CMD_WORDS:
            raise ValueError(f"buffer length is not a multiple of {CMD_WORDS} words")
        if n > self.ends_cap:
            free(self.ends)
            self.ends = <int64_t*>malloc(n * sizeof(int64_t))
            if not self.ends:
                self.ends_cap = 0
                raise MemoryError()
            self.ends_cap = n
        self.ev_n = 0
        self.batch_n = 0
        for i in range(n):
            self._run(c + i * CMD_WORDS)
            self.ends[i] = self.ev_n // EV_WORDS
        self.batch_n = n
        return self.ev_n // EV_WORDS

    def command_ends(self) -> list:
        """For each command of the last batch, the event count after it ran."""
        return [self.ends[i] for i in range(self.batch_n)]

    def event_words(self) -> bytes:
        """The raw event buffer of the last call or batch (native-endian int64 words)."""
        return (<char*>self.ev)[:self.ev_n * sizeof(int64_t)]

    def paced_latencies(self, const int64_t[::1] commands, int64_t interval_ns,
                        int64_t[::1] out, int64_t[::1] service=None) -> None:
        """Run commands open loop, one every interval_ns, writing each one's latency.

        Latency is measured from the command's scheduled start, so a stall delays and is
        charged to every command queued behind it (no coordinated omission). ``service``,
        if given, receives each command's own run time (from its actual start).
        """
        cdef int64_t n = commands.shape[0] // CMD_WORDS
        cdef int64_t i, due, start, began, done
        cdef bint keep_service = service is not None
        if out.shape[0] < n or (keep_service and service.shape[0] < n):
            raise ValueError("latency buffer too small")
        start = now_ns()
        for i in range(n):
            due = start + i * interval_ns
            began = now_ns()
            while began < due:
                began = now_ns()
            self.ev_n = 0
            self._run(&commands[i * CMD_WORDS])
            done = now_ns()
            out[i] = done - due
            if keep_service:
                service[i] = done - began

    # --- restoring a saved state ---------------------------------------------------------

    cdef int32_t restored_slot(self, int64_t order_id) except -1:
        if order_id <= 0 or self.map_get(order_id) >= 0:
            raise ValueError(f"bad or duplicate order id {order_id} in book state")
        return self.alloc()

    def restore_resting(self, int64_t order_id, int64_t account, int64_t side, int64_t price,
                        int64_t remaining, int64_t shown, int64_t display_qty, int64_t tif,
                        int64_t expire_ts, int64_t stp, bint post_only) -> None:
        """Append a resting order to the back of its level, as a saved state lists it."""
        if (self.check_price(price) or not 0 <= side <= 1 or not 0 < shown <= remaining
                or remaining > MAX_QTY_LOTS or display_qty < 0
                or (shown != remaining if display_qty == 0 else shown > display_qty)
                or tif not in (GTC, GTD) or not 0 <= stp <= 3):
            raise ValueError(f"bad resting order {order_id} in book state")
        cdef int32_t s = self.restored_slot(order_id)
        cdef Order* o = &self.pool[s]
        o.order_id = order_id
        o.account = account
        o.side = <int>side
        o.order_type = T_LIMIT
        o.price = price
        o.stop_price = 0
        o.remaining = remaining
        o.shown = shown
        o.display_qty = display_qty
        o.tif = <int>tif
        o.expire_ts = expire_ts
        o.stp = <int>stp
        o.post_only = post_only
        o.in_map = 0
        self.link_resting(s)

    def restore_stop(self, int64_t order_id, int64_t account, int64_t side, int64_t order_type,
                     int64_t price, int64_t stop_price, int64_t qty, int64_t tif,
                     int64_t expire_ts, int64_t stp) -> None:
        """Append a pending stop to the stop list, as a saved state lists it."""
        if (not 0 <= side <= 1 or order_type not in (T_STOP_LIMIT, T_STOP_MARKET)
                or not 0 < qty <= MAX_QTY_LOTS or self.check_price(stop_price)
                or (order_type == T_STOP_LIMIT and self.check_price(price))
                or not 0 <= tif <= 3 or not 0 <= stp <= 3):
            raise ValueError(f"bad stop order {order_id} in book state")
        cdef int32_t s = self.restored_slot(order_id)
        cdef Order* o = &self.pool[s]
        o.order_id = order_id
        o.account = account
        o.side = <int>side
        o.order_type = <int>order_type
        o.price = price
        o.stop_price = stop_price
        o.remaining = qty
        o.shown = 0
        o.display_qty = 0
        o.tif = <int>tif
        o.expire_ts = expire_ts
        o.stp = <int>stp
        o.post_only = 0
        o.slot = SLOT_STOP
        self.queue_push(&self.stops, s)
        self.map_put(order_id, s)
        o.in_map = 1
        if o.tif == GTD:
            self.heap_push(expire_ts, order_id)

    def restore_trading(self, int64_t last_price, int64_t next_trade_id) -> None:
        """Set the last trade price and the next trade id of a saved state."""
        self.last_price = last_price
        self.next_trade_id = next_trade_id

    # --- queries --------------------------------------------------------------------------

    def best_bid(self):
        """Highest bid price, or None."""
        cdef int64_t b = self.ladder[BUY].best
        return None if b < 0 else b + self.min_price

    def best_ask(self):
        """Lowest ask price, or None."""
        cdef int64_t a = self.ladder[SELL].best
        return None if a < 0 else a + self.min_price

    def depth(self, int side, int64_t levels) -> list:
        """Up to ``levels`` (price, shown quantity) pairs of ``side``, best first."""
        if side != BUY and side != SELL:
            raise ValueError(f"bad side {side}")
        cdef Ladder* lad = &self.ladder[side]
        cdef int64_t idx = lad.best
        out = []
        while idx >= 0 and len(out) < levels:
            out.append((idx + self.min_price, lad.levels[idx].qty))
            idx = ladder_prev(lad, idx - 1) if side == BUY \
                else ladder_next(lad, idx + 1, self.n_words)
        return out

    def resting_orders(self) -> list:
        """Resting orders, bids best first then asks best first, each level in queue order:
        (order_id, account, side, price, remaining, shown, display_qty, tif, expire_ts, stp,
        post_only)."""
        cdef int side
        cdef int64_t idx
        cdef int32_t s
        cdef Order* o
        cdef Ladder* lad
        out = []
        for side in range(2):
            lad = &self.ladder[side]
            idx = lad.best
            while idx >= 0:
                s = lad.levels[idx].head
                while s >= 0:
                    o = &self.pool[s]
                    out.append((o.order_id, o.account, o.side, o.price, o.remaining, o.shown,
                                o.display_qty, o.tif, o.expire_ts, o.stp, bool(o.post_only)))
                    s = o.next
                idx = ladder_prev(lad, idx - 1) if side == BUY \
                    else ladder_next(lad, idx + 1, self.n_words)
        return out

    def pending_stops(self) -> list:
        """Pending stops in entry order: (order_id, account, side, order_type, price,
        stop_price, qty, tif, expire_ts, stp)."""
        cdef int32_t s = self.stops.head
        cdef Order* o
        out = []
        while s >= 0:
            o = &self.pool[s]
            out.append((o.order_id, o.account, o.side, o.order_type, o.price, o.stop_price,
                        o.remaining, o.tif, o.expire_ts, o.stp))
            s = o.next
        return out

    def __contains__(self, int64_t order_id) -> bool:
        """Whether an order with this id is live (resting or a pending stop)."""
        return self.map_get(order_id) >= 0

    def __len__(self) -> int:
        """Number of live orders (resting and pending stops)."""
        return self.map_count
