// The CMX market page: instruments, a price ladder checked by seq and checksum, a depth
// chart, recent trades and the ticker, all live over the public websocket API on this host;
// with a chain, the providers panel below them (providers.js).

import { LocalBook, bookChecksum, crc32 } from "./book.js";
import { DepthChart } from "./depth.js";
import { ProvidersView } from "./providers.js";

const DEFAULT_SYMBOL = "GPU.H100.SPOT";
const BOOK_DEPTH = 25;
const SHOWN_LEVELS = 20;
const MAX_TRADES = 50;
const BACKOFF_MS = { first: 500, max: 10000 };
const RESYNC_PAUSE_MS = 1000;
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
  "Dec"];

const $ = (id) => document.getElementById(id);

const state = {
  socket: null,
  backoff: BACKOFF_MS.first,
  requestId: 0,
  symbol: decodeURIComponent(location.hash.slice(1)) || DEFAULT_SYMBOL,
  instruments: new Map(), // symbol -> instrument view
  tickers: new Map(), // symbol -> latest ticker message
  book: null, // LocalBook of the chosen symbol
  trades: [], // newest first
  checksumFailures: 0,
  resyncs: 0,
  lastResyncAt: -Infinity, // performance.now() of the last resync request
  shown: { bid: new Map(), ask: new Map() }, // price -> size as last rendered
  renderDue: false,
};

const chart = new DepthChart($("depth-chart"));

// --- decimals ---------------------------------------------------------------------------------

/** A decimal string as an integer count of 10^-places (BigInt), e.g. ("2.45", 3) -> 2450n. */
function toUnits(text, places) {
  const negative = text.startsWith("-");
  const [whole, fraction = ""] = text.replace("-", "").split(".");
  const units = BigInt(whole + fraction.padEnd(places, "0").slice(0, places));
  return negative ? -units : units;
}

/** The inverse of toUnits. */
function fromUnits(units, places) {
  const negative = units < 0n;
  const digits = (negative ? -units : units).toString().padStart(places + 1, "0");
  const text = places ? `${digits.slice(0, -places)}.${digits.slice(-places)}` : digits;
  return negative ? `-${text}` : text;
}

function instrument() {
  return state.instruments.get(state.symbol);
}

// --- connection -------------------------------------------------------------------------------

function send(message) {
  const socket = state.socket;
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ id: ++state.requestId, ...message }));
  }
}

function setConnection(status, text) {
  const box = $("connection");
  box.dataset.state = status;
  $("connection-text").textContent = text;
}

function connect() {
  setConnection("connecting", "connecting");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/`);
  state.socket = socket;
  socket.onopen = () => {
    state.backoff = BACKOFF_MS.first;
    setConnection("live", "live");
    send({ op: "subscribe", channel: "instruments" });
  };
  socket.onmessage = (event) => dispatch(JSON.parse(event.data));
  socket.onclose = () => {
    if (state.socket !== socket) return;
    state.socket = null;
    const delay = state.backoff;
    state.backoff = Math.min(state.backoff * 2, BACKOFF_MS.max);
    setConnection("down", `reconnecting in ${(delay / 1000).toFixed(1)} s`);
    setBookStatus("offline", "offline", false);
    setTimeout(connect, delay);
  };
}

function dispatch(message) {
  // Replies (subscribed, errors, ...) carry a type of their own; channel data is a snapshot,
  // an update or a heartbeat.
  if (message.type !== "snapshot" && message.type !== "update" && message.type !== "heartbeat") {
    if (message.type === "error") console.warn("cmx:", message.code, message.msg);
    return;
  }
  switch (message.channel) {
    case "book":
      onBook(message);
      return;
    case "trades":
      onTrades(message);
      return;
    case "ticker":
      onTicker(message);
      return;
    case "instruments":
      onInstruments(message);
      return;
    case "heartbeat":
      onHeartbeat(message);
  }
}

// --- instruments ------------------------------------------------------------------------------

function onInstruments(message) {
  const first = state.instruments.size === 0;
  for (const view of message.instruments) state.instruments.set(view.symbol, view);
  renderInstruments();
  if (message.type !== "snapshot") return;
  send({ op: "subscribe", channel: "ticker", symbols: [...state.instruments.keys()] });
  if (!state.instruments.has(state.symbol)) state.symbol = DEFAULT_SYMBOL;
  if (first) history.replaceState(null, "", `#${state.symbol}`);
  subscribeSymbol(state.symbol);
}

function expiryLabel(expiry) {
  const [year, month] = expiry.split("-");
  return `${MONTHS[Number(month) - 1]} ${year.slice(2)}`;
}

function renderInstruments() {
  const groups = new Map();
  for (const view of state.instruments.values()) {
    if (!groups.has(view.underlying)) groups.set(view.underlying, []);
    groups.get(view.underlying).push(view);
  }
  const list = $("instruments");
  list.replaceChildren();
  for (const [underlying, views] of [...groups].sort((a, b) => a[0].localeCompare(b[0]))) {
    const group = document.createElement("div");
    group.className = "group";
    const spot = views.filter((v) => v.kind === "spot");
    const futures = views.filter((v) => v.kind !== "spot")
      .sort((a, b) => (a.expiry ?? "").localeCompare(b.expiry ?? ""));
    const head = document.createElement("div");
    head.className = "group-head";
    head.innerHTML = "<span class=\"underlying\"></span><span class=\"maker\"></span>";
    head.firstChild.textContent = underlying;
    head.lastChild.textContent = groupLabel(spot[0] ?? views[0]);
    group.append(head);
    for (const view of spot) group.append(instrumentLink(view, "spot", "Spot"));
    if (futures.length) {
      const grid = document.createElement("div");
      grid.className = "futures";
      for (const view of futures) grid.append(instrumentLink(view, "future", expiryLabel(view.expiry)));
      group.append(grid);
    }
    list.append(group);
  }
  for (const symbol of state.tickers.keys()) renderInstrumentPrice(symbol);
  markSelected();
}

/** "NVIDIA H100 SXM 80 GB" from a GPU's description; the quoting unit where there is none. */
function groupLabel(view) {
  const [maker, rest] = view.description.split(":");
  return rest === undefined ? view.price_unit.replace(/^USDC /, "") : maker;
}

function instrumentLink(view, kind, label) {
  const link = document.createElement("a");
  link.className = `instrument ${kind}`;
  link.href = `#${view.symbol}`;
  link.dataset.symbol = view.symbol;
  link.dataset.state = view.state;
  link.title = `${view.symbol} · ${view.description}`;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = label;
  link.append(name);
  if (kind === "spot") {
    const price = document.createElement("span");
    price.className = "price num";
    link.append(price);
  }
  return link;
}

function markSelected() {
  for (const link of document.querySelectorAll(".instrument")) {
    link.classList.toggle("selected", link.dataset.symbol === state.symbol);
  }
}

function renderInstrumentPrice(symbol) {
  const ticker = state.tickers.get(symbol);
  const price = document.querySelector(`.instrument[data-symbol="${CSS.escape(symbol)}"] .price`);
  const link = price?.parentElement;
  if (!ticker || !link) return;
  price.textContent = ticker.last ?? ticker.mark ?? "—";
  link.classList.toggle("active", ticker.volume_24h !== "0");
}

function subscribeSymbol(symbol) {
  state.book = new LocalBook(symbol, BOOK_DEPTH);
  state.trades = [];
  state.shown = { bid: new Map(), ask: new Map() };
  setBookStatus("waiting", "waiting for snapshot", false);
  send({ op: "subscribe", channel: "book", symbols: [symbol], depth: BOOK_DEPTH });
  send({ op: "subscribe", channel: "trades", symbols: [symbol] });
  renderHeader();
  renderTicker();
  renderTrades();
  scheduleRender();
}

function choose(symbol) {
  if (symbol === state.symbol || !state.instruments.has(symbol)) return;
  const previous = state.symbol;
  state.symbol = symbol;
  send({ op: "unsubscribe", channel: "book", symbols: [previous] });
  send({ op: "unsubscribe", channel: "trades", symbols: [previous] });
  subscribeSymbol(symbol);
  markSelected();
}

window.addEventListener("hashchange", () => {
  const symbol = decodeURIComponent(location.hash.slice(1));
  if (state.instruments.has(symbol)) choose(symbol);
});

// --- book -------------------------------------------------------------------------------------

function setBookStatus(status, text, checksumOk) {
  const box = $("book-status");
  box.dataset.state = status;
  box.dataset.checksumOk = String(checksumOk);
  box.dataset.seq = state.book?.seq ?? "";
  box.textContent = text;
}

function resync(reason) {
  const book = state.book;
  book.resyncing = true;
  state.resyncs += 1;
  $("resyncs").textContent = $("resyncs").dataset.count = String(state.resyncs);
  setBookStatus("resyncing", `resyncing (${reason})`, false);
  // A book that fails again right after a resync waits a moment rather than loop at speed.
  const now = performance.now();
  const wait = now - state.lastResyncAt < RESYNC_PAUSE_MS * 2 ? RESYNC_PAUSE_MS : 0;
  state.lastResyncAt = now + wait;
  setTimeout(() => {
    if (state.book === book) send({ op: "resync", symbol: book.symbol });
  }, wait);
}

function onBook(message) {
  const book = state.book;
  if (!book || message.symbol !== book.symbol) return;
  const result = book.apply(message);
  if (result === "ignored") return;
  if (result === "gap") {
    resync("gap");
    return;
  }
  if (result === "mismatch") {
    state.checksumFailures += 1;
    const failures = $("checksum-failures");
    failures.textContent = failures.dataset.count = String(state.checksumFailures);
    resync("checksum");
    return;
  }
  setBookStatus("ok", `book ok · seq ${book.seq}`, true);
  scheduleRender();
}

function onHeartbeat(message) {
  const book = state.book;
  const seq = message.seqs?.[book?.symbol];
  // Every update is sent before the heartbeat: a higher seq there means one went missing.
  if (book && seq !== undefined && book.seq !== null && !book.resyncing && seq > book.seq) {
    resync("gap");
  }
}

function scheduleRender() {
  if (state.renderDue) return;
  state.renderDue = true;
  requestAnimationFrame(() => {
    state.renderDue = false;
    renderBook();
  });
}

function renderBook() {
  const book = state.book;
  const spec = instrument();
  const bids = book ? book.levels("bid") : [];
  const asks = book ? book.levels("ask") : [];
  const sizePlaces = spec?.size_precision ?? 0;
  const shownBids = withTotals(bids.slice(0, SHOWN_LEVELS), sizePlaces);
  const shownAsks = withTotals(asks.slice(0, SHOWN_LEVELS), sizePlaces);
  const last = (rows) => (rows.length ? rows[rows.length - 1].total : 0n);
  const maxTotal = Number([last(shownBids), last(shownAsks), 1n].reduce((a, b) => (a > b ? a : b)));
  const scale = { maxTotal, sizePlaces };
  fillLadder($("bids"), "bid", shownBids, scale);
  fillLadder($("asks"), "ask", [...shownAsks].reverse(), scale);
  renderSpread(bids[0], asks[0]);
  chart.update(bids, asks, spec?.price_precision ?? 3);
}

function withTotals(levels, places) {
  let total = 0n;
  return levels.map(([price, size], index) => {
    const units = toUnits(size, places);
    total += units;
    return { index, price, size, total };
  });
}

/** Ladder rows, each with a depth bar: the cumulative size up to its level. */
function fillLadder(container, side, rows, { maxTotal, sizePlaces }) {
  const previous = state.shown[side];
  const flash = previous.size > 0;
  const nodes = rows.map((row) => {
    const node = document.createElement("div");
    node.className = `level ${side}`;
    Object.assign(node.dataset, { side, level: String(row.index), price: row.price, size: row.size });
    const before = previous.get(row.price);
    if (flash && before !== row.size) {
      const grew = before === undefined || toUnits(row.size, sizePlaces) > toUnits(before, sizePlaces);
      node.classList.add(grew ? "flash-up" : "flash-down");
    }
    node.innerHTML = "<i class=\"bar\"></i>" +
      "<span class=\"px\"></span><span class=\"sz\"></span><span class=\"tot\"></span>";
    node.children[0].style.width = `${(Number(row.total) / maxTotal) * 100}%`;
    node.children[1].textContent = row.price;
    node.children[2].textContent = row.size;
    node.children[3].textContent = fromUnits(row.total, sizePlaces);
    return node;
  });
  container.replaceChildren(...nodes);
  state.shown[side] = new Map(rows.map((row) => [row.price, row.size]));
}

function renderSpread(bestBid, bestAsk) {
  const spec = instrument();
  const ticker = state.tickers.get(state.symbol);
  const lastBox = $("spread-mid");
  lastBox.textContent = ticker?.last ?? "—";
  lastBox.className = `num ${$("t-last").dataset.move ?? ""}`;
  const sizeBox = $("spread-size");
  if (!bestBid || !bestAsk || !spec) {
    sizeBox.textContent = "";
    return;
  }
  const places = spec.price_precision;
  const bid = toUnits(bestBid[0], places);
  const ask = toUnits(bestAsk[0], places);
  const bps = (Number(ask - bid) / Number(ask + bid)) * 2e4;
  sizeBox.textContent = `spread ${fromUnits(ask - bid, places)} · ${bps.toFixed(1)} bps`;
}

// --- trades -----------------------------------------------------------------------------------

function onTrades(message) {
  if (message.symbol !== state.symbol) return;
  const fresh = [...message.trades].reverse();
  state.trades = message.type === "snapshot" ? fresh : [...fresh, ...state.trades];
  state.trades.length = Math.min(state.trades.length, MAX_TRADES);
  renderTrades(message.type === "snapshot" ? 0 : fresh.length);
}

function clock(ts) {
  const date = new Date(Number(BigInt(ts) / 1000000n));
  return date.toTimeString().slice(0, 8);
}

function renderTrades(newCount = 0) {
  const rows = state.trades.map((trade, index) => {
    const row = document.createElement("div");
    row.className = `trade ${trade.side === "buy" ? "bid" : "ask"}${index < newCount ? " new" : ""}`;
    Object.assign(row.dataset, {
      tradeId: String(trade.trade_id), price: trade.price, size: trade.qty, side: trade.side,
    });
    row.innerHTML = "<span class=\"px\"></span><span class=\"sz\"></span><span class=\"ts\"></span>";
    row.children[0].textContent = trade.price;
    row.children[1].textContent = trade.qty;
    row.children[2].textContent = clock(trade.ts);
    return row;
  });
  const list = $("trades");
  list.replaceChildren(...rows);
  if (!rows.length) list.innerHTML = "<div class=\"empty\">no trades yet</div>";
}

// --- ticker -----------------------------------------------------------------------------------

function onTicker(message) {
  const before = state.tickers.get(message.symbol);
  state.tickers.set(message.symbol, message);
  renderInstrumentPrice(message.symbol);
  if (message.symbol !== state.symbol) return;
  const spec = instrument();
  if (before?.last && message.last && before.last !== message.last && spec) {
    const up = toUnits(message.last, spec.price_precision) > toUnits(before.last, spec.price_precision);
    $("t-last").dataset.move = up ? "up" : "down";
  }
  renderTicker();
  scheduleRender();
}

function renderHeader() {
  const spec = instrument();
  $("symbol").textContent = state.symbol;
  $("description").textContent = $("description").title = spec ? spec.description : "";
  $("unit").textContent = spec ? spec.price_unit : "";
  $("book-depth").textContent = String(BOOK_DEPTH);
  delete $("t-last").dataset.move;
}

/** An index has six decimals (USDC); show it at the instrument's price precision or finer. */
function trimmed(text, places) {
  if (!text || !text.includes(".")) return text;
  const [whole, fraction] = text.split(".");
  const kept = fraction.replace(/0+$/, "").padEnd(places, "0");
  return kept ? `${whole}.${kept}` : whole;
}

function renderTicker() {
  const ticker = state.tickers.get(state.symbol);
  const spec = instrument();
  const set = (id, text) => { $(id).textContent = text ?? "—"; };
  set("t-last", ticker?.last);
  set("t-mark", ticker?.mark);
  set("t-index", trimmed(ticker?.index, spec?.price_precision ?? 0));
  set("t-volume", ticker ? `${ticker.volume_24h} ${spec?.quantity_unit ?? ""}` : null);
  set("t-bid", ticker?.bid ? `${ticker.bid} × ${ticker.bid_qty}` : null);
  set("t-ask", ticker?.ask ? `${ticker.ask} × ${ticker.ask_qty}` : null);
  if (ticker?.bid && ticker?.ask && spec) {
    const places = spec.price_precision;
    set("t-spread", fromUnits(toUnits(ticker.ask, places) - toUnits(ticker.bid, places), places));
  } else {
    set("t-spread", null);
  }
  document.title = ticker?.last ? `${ticker.last} ${state.symbol} · CMX` : `${state.symbol} · CMX`;
}

// --- start ------------------------------------------------------------------------------------

/** For tests and the curious: the checksum functions and the page's live state. */
window.cmx = { crc32, bookChecksum, state };

renderHeader();
renderTrades();
connect();
new ProvidersView().start();
