// The client-side order book: applies a `book` channel's snapshot and updates, checks that
// `seq` rises by exactly one, keeps the book cut to its depth, and verifies the Kraken v2
// CRC32 checksum over the top ten levels (see PROTOCOLS.md). Prices and sizes stay the
// decimal strings the server sent; ordering compares them as decimals, never as floats.

export const CHECKSUM_LEVELS = 10;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

const encoder = new TextEncoder();

/** zlib's CRC32 of a string's UTF-8 bytes, as an unsigned 32-bit integer. */
export function crc32(text) {
  let c = 0xffffffff;
  for (const byte of encoder.encode(text)) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function digits(text) {
  return text.replace(".", "").replace(/^0+/, "");
}

/** The checksum of a book given best-first [price, size] string pairs of each side. */
export function bookChecksum(bids, asks) {
  let text = "";
  for (const side of [asks, bids]) {
    for (const [price, size] of side.slice(0, CHECKSUM_LEVELS)) text += digits(price) + digits(size);
  }
  return crc32(text);
}

/** Compare two non-negative decimal strings by value (-1, 0, 1). */
export function compareDecimal(a, b) {
  const [ai, af = ""] = a.split(".");
  const [bi, bf = ""] = b.split(".");
  const aw = ai.replace(/^0+/, "");
  const bw = bi.replace(/^0+/, "");
  if (aw.length !== bw.length) return aw.length < bw.length ? -1 : 1;
  if (aw !== bw) return aw < bw ? -1 : 1;
  const width = Math.max(af.length, bf.length);
  const ap = af.padEnd(width, "0");
  const bp = bf.padEnd(width, "0");
  return ap === bp ? 0 : ap < bp ? -1 : 1;
}

/** One symbol's book at a subscribed depth, fed the channel's messages. */
export class LocalBook {
  constructor(symbol, depth) {
    this.symbol = symbol;
    this.depth = depth;
    this.bids = new Map(); // price -> size
    this.asks = new Map();
    this.seq = null; // null until the first snapshot
    this.resyncing = false;
  }

  /** Best-first [price, size] levels of a side ("bid" or "ask"). */
  levels(side) {
    const map = side === "bid" ? this.bids : this.asks;
    const sign = side === "bid" ? -1 : 1;
    return [...map.entries()].sort((x, y) => sign * compareDecimal(x[0], y[0]));
  }

  checksum() {
    return bookChecksum(this.levels("bid"), this.levels("ask"));
  }

  /**
   * Feed one message. Returns "ok", "ignored" (an update while waiting for a snapshot),
   * "gap" (seq did not follow on) or "mismatch" (checksum differs after applying).
   */
  apply(message) {
    if (message.type === "snapshot") {
      this.bids = new Map(message.bids);
      this.asks = new Map(message.asks);
      this.resyncing = false;
    } else {
      if (this.seq === null || this.resyncing) return "ignored";
      if (message.prev_seq !== this.seq || message.seq !== this.seq + 1) return "gap";
      this.#merge(this.bids, message.bids);
      this.#merge(this.asks, message.asks);
      this.#cut("bid");
      this.#cut("ask");
    }
    this.seq = message.seq;
    return this.checksum() === message.checksum ? "ok" : "mismatch";
  }

  #merge(map, levels) {
    for (const [price, size] of levels) {
      if (/^0*\.?0*$/.test(size)) map.delete(price);
      else map.set(price, size);
    }
  }

  #cut(side) {
    const map = side === "bid" ? this.bids : this.asks;
    if (map.size <= this.depth) return;
    for (const [price] of this.levels(side).slice(this.depth)) map.delete(price);
  }
}
