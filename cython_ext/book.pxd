# The C layout of the matching core. Semantics: engine/book.py (module docstring).

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

# Packed command record: CMD_WORDS int64 words.
#   [kind, ts, order_id, account, side, price, qty, order_type, tif, post_only,
#    display_qty, stop_price, expire_ts, stp]
# MassCancel puts its side (-1 = both) in the side word.
cdef enum:
    CMD_WORDS = 14
    CMD_NEW_ORDER = 1
    CMD_CANCEL = 2
    CMD_AMEND = 3
    CMD_MASS_CANCEL = 4
    CMD_EXPIRE = 5

# Packed event record: EV_WORDS int64 words, [kind, fields...] in the field order of the
# matching msgspec event in engine/messages.py; unused words are 0.
cdef enum:
    EV_WORDS = 11
    EV_ACCEPTED = 1
    EV_REJECTED = 2
    EV_FILL = 3
    EV_CANCELLED = 4
    EV_AMENDED = 5
    EV_TRIGGERED = 6
    EV_BOOK_LEVEL = 7

# Where a pooled order is.
cdef enum:
    SLOT_FREE = 0
    SLOT_INFLIGHT = 1  # accepted, being matched
    SLOT_RESTING = 2
    SLOT_STOP = 3      # pending stop, linked in the stop list

ctypedef struct Order:
    int64_t order_id
    int64_t account
    int64_t price
    int64_t stop_price
    int64_t remaining
    int64_t shown
    int64_t display_qty
    int64_t expire_ts
    int32_t prev          # neighbours in the level queue, or in the stop list
    int32_t next          # (next also links the free list)
    uint8_t side
    uint8_t order_type
    uint8_t tif
    uint8_t stp
    uint8_t post_only
    uint8_t slot          # SLOT_*
    uint8_t in_map        # the id map points at this slot

ctypedef struct Level:
    int32_t head
    int32_t tail
    int64_t qty           # shown quantity of all orders in the queue

ctypedef struct Ladder:
    Level* levels         # one per price in the band
    uint64_t* bits        # bit i set <=> level i has orders
    uint64_t* summary     # bit w set <=> bits[w] != 0
    int64_t best          # index of the best level, -1 when the side is empty
