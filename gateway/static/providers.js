// The providers view: registered nodes and their uptime over the last 24 h, the current
// uptime epoch and the deliveries in progress, polled from /api/providers. A server without a
// chain has no such route (its /api/status does not list it), and the panel stays hidden.
// Counts stay integers; a percentage becomes a float only to be printed.

const PATH = "/api/providers";
const POLL_MS = 5000;
const STATUS_RETRY_MS = 30000;
const TICK_MS = 1000;
const NS_PER_MS = 1e6;

const $ = (id) => document.getElementById(id);

/** "0x1234…cdef" */
export function shortAddress(address) {
  return address.length > 12 ? `${address.slice(0, 6)}…${address.slice(-4)}` : address;
}

/** A ns timestamp as local HH:MM. */
function hhmm(ns) {
  return new Date(Math.floor(ns / NS_PER_MS)).toTimeString().slice(0, 5);
}

/** Parts per million as a percentage with one decimal, cut (not rounded) so that only a
 * whole share shows 100.0: 987654 -> "98.7". */
function percent(ppm) {
  return (Math.floor(ppm / 1000) / 10).toFixed(1);
}

/** A delivered / required share in parts per million (integers only). */
function sharePpm(delivered, required) {
  return required > 0 ? Math.floor((delivered * 1000000) / required) : 0;
}

/** Micro-USDC (an integer) as USDC with two decimals, truncated: 12345678 -> "12.34". */
export function usdc(micro) {
  const sign = micro < 0 ? "-" : "";
  const cents = Math.floor(Math.abs(micro) / 10000);
  return `${sign}${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, "0")}`;
}

function minutesSeconds(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(total / 60)}:${String(total % 60).padStart(2, "0")}`;
}

function cell(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class ProvidersView {
  constructor() {
    this.panel = $("providers");
    this.chip = $("epoch-chip");
    this.report = null;
    this.receivedAt = 0; // performance.now() when the report arrived
    this.available = null; // null: not asked yet
    this.chip.addEventListener("click", () => this.panel.scrollIntoView({ behavior: "smooth" }));
  }

  start() {
    this.poll();
    setInterval(() => this.renderEpoch(), TICK_MS);
  }

  async poll() {
    let wait = POLL_MS;
    try {
      if (!this.available) {
        const response = await fetch("/api/status", { cache: "no-store" });
        const status = response.ok ? await response.json() : {};
        this.available = Array.isArray(status.routes) && status.routes.includes(PATH);
      }
      if (this.available) {
        const response = await fetch(PATH, { cache: "no-store" });
        if (response.status === 404) {
          this.available = false;
        } else if (response.ok) {
          this.report = await response.json();
          this.receivedAt = performance.now();
        }
      }
      if (!this.available) {
        this.report = null;
        wait = STATUS_RETRY_MS;
      }
    } catch (error) {
      // the server is unreachable (restarting): keep what is shown, ask again later
      this.available = null;
    }
    this.render();
    setTimeout(() => this.poll(), wait);
  }

  /** The server's clock now, from the report's and the time since it arrived. */
  nowNs() {
    return this.report.now_ns + (performance.now() - this.receivedAt) * NS_PER_MS;
  }

  render() {
    const report = this.report;
    const shown = report !== null;
    this.panel.hidden = !shown;
    this.chip.hidden = !shown || report.epoch === null;
    this.panel.dataset.state = shown ? "live" : "absent";
    if (!shown) return;
    const history = report.history;
    const since = $("uptime-since");
    since.dataset.full = String(history.full);
    since.textContent = history.since_ns === null ? "no epoch recorded yet"
      : history.full ? "uptime over 24 h" : `uptime since ${hhmm(history.since_ns)}`;
    this.renderEpoch();
    this.renderNodes(report);
    this.renderDeliveries(report);
    this.renderSettled(report);
  }

  renderEpoch() {
    const report = this.report;
    if (!report) return;
    const box = $("epoch");
    const epoch = report.epoch;
    if (epoch === null) {
      box.textContent = "no epoch yet";
      box.dataset.epoch = "";
      box.dataset.secondsLeft = "";
      return;
    }
    const leftMs = (epoch.end_ns - this.nowNs()) / NS_PER_MS;
    const seconds = Math.max(0, Math.ceil(leftMs / 1000));
    box.dataset.epoch = String(epoch.epoch);
    box.dataset.secondsLeft = String(seconds);
    box.dataset.state = seconds > 0 ? "open" : "due";
    box.title = `beacon ${epoch.beacon}\nstarted ${hhmm(epoch.start_ns)}, ` +
      `${Math.round(epoch.length_ns / 1e9)} s long`;
    const left = seconds > 0 ? `${minutesSeconds(leftMs)} left` : "next due";
    box.replaceChildren(cell("span", "muted", "epoch "), cell("span", "num", String(epoch.epoch)),
      cell("span", "muted", " · "), cell("span", "num left", left));
    this.chip.textContent = `epoch ${epoch.epoch} · ${left}`;
    this.chip.dataset.state = box.dataset.state;
  }

  renderNodes(report) {
    $("epoch-head").textContent = report.epoch === null ? "Epoch" : `#${report.epoch.epoch}`;
    const table = $("provider-nodes");
    const groups = report.providers.map((provider) => {
      const group = cell("tbody", "provider-group");
      group.dataset.provider = provider.provider;
      const head = cell("tr", "provider-row");
      const title = cell("td", "", undefined);
      title.colSpan = 6;
      const name = cell("span", "provider-address num", shortAddress(provider.provider));
      name.title = provider.provider;
      const count = provider.nodes.length;
      title.append(name, cell("span", "muted",
        ` ${count} node${count === 1 ? "" : "s"} · ${provider.active_units} units active`));
      head.append(title);
      group.append(head, ...provider.nodes.map((node) => this.nodeRow(node)));
      return group;
    });
    table.querySelectorAll("tbody").forEach((body) => body.remove());
    table.append(...groups);
    $("providers-empty").hidden = groups.length > 0;
  }

  nodeRow(node) {
    const row = cell("tr", `provider-node ${node.status}`);
    Object.assign(row.dataset, {
      node: node.node,
      underlying: node.underlying,
      units: String(node.units),
      status: node.status,
      epochs: String(node.epochs),
      epochsAttested: String(node.epochs_attested),
      uptimePpm: node.uptime_ppm === null ? "" : String(node.uptime_ppm),
      attestedCurrent: String(node.attested_current),
    });
    const address = cell("td", "node-address num", shortAddress(node.node));
    address.title = node.node;
    if (node.deregistered_at !== null) {
      const when = node.status === "active" ? "leaves" : "deregistered";
      address.append(cell("span", "node-status", ` ${when} ${hhmm(node.deregistered_at)}`));
    }
    const uptime = cell("td", "uptime r");
    if (node.uptime_ppm === null) {
      uptime.append(cell("span", "muted", "—"));
    } else {
      const level = node.uptime_ppm >= 990000 ? "good" : node.uptime_ppm >= 900000 ? "fair" : "poor";
      uptime.dataset.level = level;
      const meter = cell("span", "meter");
      const fill = cell("i");
      fill.style.width = `${node.uptime_ppm / 10000}%`;
      meter.append(fill);
      const figures = cell("span", "uptime-cell");
      figures.append(meter, cell("span", "num pct", `${percent(node.uptime_ppm)}%`));
      uptime.append(figures);
      uptime.title = `${node.epochs_attested} of ${node.epochs} epochs attested`;
    }
    const current = cell("td", "current c");
    current.append(cell("span", `mark ${node.attested_current ? "yes" : "no"}`,
      node.attested_current ? "●" : "○"));
    current.title = node.attested_current ? "attested the current epoch" : "not attested yet";
    const last = node.last_attested_epoch;
    row.append(address, cell("td", "node-class", node.underlying),
      cell("td", "num r", String(node.units)), uptime, current,
      cell("td", "num r muted", last === null ? "—" : `#${last}`));
    return row;
  }

  renderDeliveries(report) {
    const list = $("provider-deliveries");
    const rows = report.deliveries.map((delivery) => this.deliveryRow(delivery));
    list.replaceChildren(...rows);
    $("deliveries-count").textContent = String(rows.length);
    if (!rows.length) list.append(cell("div", "empty", "no deliveries in progress"));
  }

  renderSettled(report) {
    const list = $("provider-settled");
    const rows = (report.settled ?? []).map((settled) => this.settledRow(settled));
    list.replaceChildren(...rows);
    $("settled-count").textContent = String(rows.length);
    if (!rows.length) list.append(cell("div", "empty", "none settled since the server started"));
  }

  settledRow(d) {
    const ppm = sharePpm(d.delivered, d.required);
    const figures = cell("div", "delivery-figures");
    const paid = cell("span", "num settled-paid",
      `seller ${usdc(d.seller_paid)} · buyer back ${usdc(d.buyer_refund + d.buyer_compensation)}`);
    paid.title = `seller paid ${usdc(d.seller_paid)} USDC (fee ${usdc(d.seller_fee)}), bond ` +
      `released ${usdc(d.bond_released)}; buyer refund ${usdc(d.buyer_refund)} + ` +
      `compensation ${usdc(d.buyer_compensation)} USDC`;
    figures.append(paid, cell("span", "num delivery-pct", `${percent(ppm)}%`));
    const row = deliveryCard(d, "settled", `settled ${hhmm(d.settled_ns)}`,
      ` · ${d.qty} lots · ${d.delivered}/${d.required} node-epochs`, ppm, figures);
    Object.assign(row.dataset, {
      sellerPaid: String(d.seller_paid),
      buyerCompensation: String(d.buyer_compensation),
    });
    return row;
  }

  deliveryRow(d) {
    const ppm = sharePpm(d.delivered, d.required);
    const quantity = `${d.quantity ?? d.qty} ${d.quantity_unit ?? "lots"}`;
    const epochs = d.epochs_expected === null ? `${d.epochs_opened}`
      : `${d.epochs_opened}/${d.epochs_expected}`;
    const figures = cell("div", "delivery-figures");
    if (d.status === "pending") {
      figures.append(cell("span", "muted", `starts ${hhmm(d.window_start)}`));
    } else {
      figures.append(cell("span", "num", `${d.delivered}/${d.required} node-epochs`),
        cell("span", "num delivery-pct", d.required ? `${percent(ppm)}%` : "—"));
    }
    const row = deliveryCard(d, d.status, d.status, ` · ${quantity} · epochs ${epochs}`, ppm,
      figures);
    row.dataset.status = d.status;
    row.dataset.epochsOpened = String(d.epochs_opened);
    row.querySelector(".delivery-meta").title =
      d.allocation.map((a) => `${a.node}: ${a.units}`).join("\n") +
      (d.unallocated ? `\nunallocated: ${d.unallocated}` : "");
    return row;
  }
}

/** One delivery's card: id, symbol, window and a badge; the seller and ``detail``; a bar
 * filled to ``ppm``; then ``figures``. */
function deliveryCard(d, state, badge, detail, ppm, figures) {
  const row = cell("div", `provider-delivery ${state}`);
  Object.assign(row.dataset, {
    deliveryId: String(d.delivery_id),
    delivered: String(d.delivered),
    required: String(d.required),
  });
  const head = cell("div", "delivery-head");
  head.append(cell("span", "num delivery-id", `#${d.delivery_id}`),
    cell("span", "delivery-symbol", d.symbol),
    cell("span", "num muted", `${hhmm(d.window_start)}–${hhmm(d.window_end)}`),
    cell("span", `delivery-status ${state}`, badge));
  const seller = cell("span", "num", shortAddress(d.seller));
  seller.title = `seller ${d.seller}`;
  const meta = cell("div", "delivery-meta muted");
  meta.append(cell("span", "", "from "), seller, cell("span", "num", detail));
  const bar = cell("div", "delivery-bar");
  const fill = cell("i");
  fill.style.width = `${ppm / 10000}%`;
  bar.append(fill);
  row.append(head, meta, bar, figures);
  return row;
}
