// The depth chart: cumulative bid and ask sizes against price, drawn on a <canvas>.
// Numbers become floats here for drawing only; the book itself keeps decimal strings.

const COLORS = {
  bid: "#1fc18b",
  bidFill: "rgba(31, 193, 139, 0.16)",
  ask: "#f0506e",
  askFill: "rgba(240, 80, 110, 0.16)",
  grid: "rgba(132, 146, 166, 0.12)",
  axis: "#6b7687",
  mid: "rgba(214, 220, 228, 0.45)",
  text: "#aab4c2",
};
const FONT = '11px "DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace';
const PAD = { left: 8, right: 56, top: 14, bottom: 24 };

function cumulative(levels) {
  let total = 0;
  return levels.map(([price, size]) => {
    total += Number(size);
    return [Number(price), total];
  });
}

function niceStep(range, count) {
  const raw = range / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const unit = [1, 2, 2.5, 5, 10].find((m) => m * magnitude >= raw) ?? 10;
  return unit * magnitude;
}

/** Draws one book's cumulative depth into a canvas that follows its container's size. */
export class DepthChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.bids = [];
    this.asks = [];
    this.precision = 3;
    this.hover = null;
    new ResizeObserver(() => this.draw()).observe(canvas.parentElement);
    canvas.addEventListener("mousemove", (e) => {
      this.hover = e.offsetX;
      this.draw();
    });
    canvas.addEventListener("mouseleave", () => {
      this.hover = null;
      this.draw();
    });
  }

  /** Set best-first [price, size] levels of each side and redraw. */
  update(bids, asks, precision) {
    this.bids = cumulative(bids);
    this.asks = cumulative(asks);
    this.precision = precision;
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const box = canvas.parentElement.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(100, Math.floor(box.width));
    const height = Math.max(120, Math.floor(box.height));
    if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
      canvas.width = width * ratio;
      canvas.height = height * ratio;
      canvas.style.width = `${width}px`;
      canvas.style.height = `${height}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;
    const { bids, asks } = this;
    if (!bids.length && !asks.length) {
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "center";
      ctx.fillText("no resting orders", width / 2, height / 2);
      return;
    }
    const bestBid = bids.length ? bids[0][0] : asks[0][0];
    const bestAsk = asks.length ? asks[0][0] : bids[0][0];
    const mid = (bestBid + bestAsk) / 2;
    const low = bids.length ? bids[bids.length - 1][0] : bestAsk;
    const high = asks.length ? asks[asks.length - 1][0] : bestBid;
    const half = Math.max(mid - low, high - mid, mid * 0.002) * 1.08;
    const x0 = mid - half;
    const x1 = mid + half;
    const yMax = Math.max(bids.length ? bids[bids.length - 1][1] : 0,
      asks.length ? asks[asks.length - 1][1] : 0) * 1.15;
    const plotW = width - PAD.left - PAD.right;
    const plotH = height - PAD.top - PAD.bottom;
    const px = (price) => PAD.left + ((price - x0) / (x1 - x0)) * plotW;
    const py = (size) => PAD.top + plotH - (size / yMax) * plotH;

    this.#grid(ctx, { x0, x1, yMax, px, py, plotW, plotH, width });
    this.#side(ctx, bids, { px, py, edge: PAD.left, base: py(0) }, COLORS.bid, COLORS.bidFill);
    this.#side(ctx, asks, { px, py, edge: PAD.left + plotW, base: py(0) }, COLORS.ask,
      COLORS.askFill);

    ctx.strokeStyle = COLORS.mid;
    ctx.setLineDash([3, 4]);
    ctx.beginPath();
    ctx.moveTo(px(mid), PAD.top);
    ctx.lineTo(px(mid), py(0));
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = COLORS.text;
    ctx.textAlign = "center";
    ctx.fillText(`mid ${mid.toFixed(this.precision + 1)}`, px(mid), PAD.top + 2);

    if (this.hover !== null) this.#crosshair(ctx, { x0, x1, px, py, plotW, plotH, mid });
  }

  #grid(ctx, { x0, x1, yMax, px, py, plotH, width }) {
    ctx.strokeStyle = COLORS.grid;
    ctx.fillStyle = COLORS.axis;
    ctx.lineWidth = 1;
    const yStep = niceStep(yMax, 4);
    ctx.textAlign = "left";
    for (let y = yStep; y < yMax; y += yStep) {
      ctx.beginPath();
      ctx.moveTo(PAD.left, Math.round(py(y)) + 0.5);
      ctx.lineTo(width - PAD.right, Math.round(py(y)) + 0.5);
      ctx.stroke();
      ctx.fillText(String(+y.toPrecision(6)), width - PAD.right + 6, py(y) + 4);
    }
    const xStep = niceStep(x1 - x0, 6);
    ctx.textAlign = "center";
    for (let x = Math.ceil(x0 / xStep) * xStep; x <= x1; x += xStep) {
      ctx.beginPath();
      ctx.moveTo(Math.round(px(x)) + 0.5, PAD.top);
      ctx.lineTo(Math.round(px(x)) + 0.5, PAD.top + plotH);
      ctx.stroke();
      ctx.fillText(x.toFixed(this.precision), px(x), PAD.top + plotH + 16);
    }
  }

  #side(ctx, points, { px, py, edge, base }, stroke, fill) {
    if (!points.length) return;
    ctx.beginPath();
    ctx.moveTo(px(points[0][0]), base);
    let previous = 0;
    for (const [price, total] of points) {
      ctx.lineTo(px(price), py(previous));
      ctx.lineTo(px(price), py(total));
      previous = total;
    }
    ctx.lineTo(edge, py(previous));
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(edge, base);
    ctx.closePath();
    ctx.fillStyle = fill;
    ctx.fill();
    ctx.lineWidth = 1;
  }

  #crosshair(ctx, { x0, x1, px, py, plotW, plotH, mid }) {
    const x = Math.min(Math.max(this.hover, PAD.left), PAD.left + plotW);
    const price = x0 + ((x - PAD.left) / plotW) * (x1 - x0);
    const side = price < mid ? this.bids : this.asks;
    const reached = side.filter(([p]) => (price < mid ? p >= price : p <= price));
    const total = reached.length ? reached[reached.length - 1][1] : 0;
    ctx.strokeStyle = COLORS.mid;
    ctx.beginPath();
    ctx.moveTo(x + 0.5, PAD.top);
    ctx.lineTo(x + 0.5, PAD.top + plotH);
    ctx.stroke();
    const label = `${price.toFixed(this.precision)}  Σ ${+total.toPrecision(8)}`;
    const w = ctx.measureText(label).width + 12;
    const left = Math.min(x + 8, PAD.left + plotW - w);
    ctx.fillStyle = "rgba(18, 23, 31, 0.92)";
    ctx.fillRect(left, py(total) - 22, w, 18);
    ctx.fillStyle = price < mid ? COLORS.bid : COLORS.ask;
    ctx.textAlign = "left";
    ctx.fillText(label, left + 6, py(total) - 9);
  }
}
