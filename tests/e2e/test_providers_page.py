"""The market page's providers panel in headless Chromium: nodes registered, epochs opened and
attested and a spot trade go through the real engine, ``/api/providers`` answers from them
(`chain_bridge.providers`), and the page must show the nodes with their uptime, the current
epoch and the delivery in progress with its delivered share; without the route (no chain) the
panel stays hidden."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.sync_api import Page

from chain_bridge.providers import SettledDeliveries, UptimeHistory, providers_report
from engine.commands import AttestationAccepted, OpenEpoch, RegisterNode
from engine.delivery import payout
from engine.events import DeliverySettled
from gateway.auth import address_of
from tests.e2e.conftest import (
    SELLER_KEY,
    WAIT_S,
    PageOpener,
    ServedExchange,
    Trader,
    wait_for,
)

ARTIFACTS = Path(__file__).parent / "artifacts"
SECOND = 1_000_000_000
EPOCH = 300 * SECOND
HOUR = 3600 * SECOND

NODE_A = "0x" + "a1" * 20  # the seller's, attests every epoch
NODE_B = "0x" + "b2" * 20  # the seller's, misses the window's second epoch
NODE_C = "0x" + "c3" * 20  # another provider's, has not attested the current epoch yet
OTHER_PROVIDER = "0x" + "0c" * 20

def usdc(micro: int) -> str:
    """Micro-USDC as the page shows it: two decimals, truncated."""
    return f"{micro // 1_000_000}.{micro % 1_000_000 // 10_000:02d}"


def beacon(epoch: int) -> str:
    return f"0x{epoch:064x}"


def attest(node: str, epoch: int) -> AttestationAccepted:
    return AttestationAccepted(node, epoch, epoch, f"0x{int(node, 16) ^ epoch:064x}")


def node_rows(page: Page) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.evaluate("""() =>
      [...document.querySelectorAll("#provider-nodes .provider-node")].map((row) => ({
        node: row.dataset.node, provider: row.closest("tbody").dataset.provider,
        units: row.dataset.units, uptime: row.querySelector(".pct")?.textContent ?? "",
        attested: row.dataset.epochsAttested, epochs: row.dataset.epochs,
        current: row.dataset.attestedCurrent}))""")
    return rows


def test_the_providers_panel_shows_nodes_epoch_and_deliveries(
        exchange: ServedExchange, traders: tuple[Trader, Trader], open_page: PageOpener) -> None:
    buyer, seller = traders
    provider = address_of(SELLER_KEY)
    history = UptimeHistory()
    uptime = exchange.gateway.exchange.uptime
    # fed the released events, as the chain service does
    settled = exchange.call(lambda: SettledDeliveries(exchange.gateway.exchange))
    exchange.call(lambda: exchange.gateway.event_listeners.append(settled.on_event))

    def run(*commands: object) -> None:
        for command in commands:
            exchange.submit(command)
        exchange.call(lambda: history.observe(uptime))  # as the chain service's loop does

    first = time.time_ns() // EPOCH  # the epoch now, as the chain service numbers them
    run(RegisterNode(NODE_A, provider, "GPU.H100", 4),
        RegisterNode(NODE_B, provider, "GPU.H100", 4),
        RegisterNode(NODE_C, OTHER_PROVIDER, "GPU.H200", 8),
        OpenEpoch(first, beacon(first), first * EPOCH, EPOCH),
        attest(NODE_A, first), attest(NODE_B, first), attest(NODE_C, first))
    seller.place("sell", "2.500", "6")
    assert buyer.place("buy", "2.500", "6")["status"] == "filled"
    delivery = exchange.call(lambda: next(iter(exchange.gateway.exchange.deliveries.values())))
    assert delivery.allocation == [(NODE_A, 4), (NODE_B, 2)]
    window = delivery.window_start // EPOCH  # the window's first epoch: 12 of them in the hour
    for epoch in range(window, window + 3):
        run(OpenEpoch(epoch, beacon(epoch), epoch * EPOCH, EPOCH))
        if epoch > window:  # the previous epoch's attestations come after this one opened
            run(*(attest(node, epoch - 1) for node in (NODE_A, NODE_B, NODE_C)
                  if (node, epoch - 1) != (NODE_B, window + 1)))
    run(attest(NODE_A, window + 2), attest(NODE_B, window + 2))
    # the page's clock is the report's: 90 s into the window's third epoch
    now = (window + 2) * EPOCH + 90 * SECOND
    exchange.call(lambda: exchange.server.routes.__setitem__(
        "/api/providers",
        lambda _query: providers_report(exchange.gateway.exchange, history, now, settled)))
    # and how the Settled list shows a settlement, were this delivery to end at 16 of 18
    # (what the engine pays: `payout`; the event comes from the engine at the window's end)
    paid = payout(delivery, 16, 18)
    exchange.call(lambda: settled.on_event(DeliverySettled(
        delivery.delivery_id, 16, 18, paid.seller_paid, paid.seller_fee, paid.buyer_refund,
        paid.buyer_compensation, paid.bond_released), now))

    page = open_page()
    page.locator("#providers").wait_for(state="visible", timeout=WAIT_S * 1000)
    wait_for("panel", lambda: page.get_attribute("#providers", "data-state"), "live")
    assert page.get_attribute("#epoch", "data-epoch") == str(window + 2)
    left = int(page.get_attribute("#epoch", "data-seconds-left") or "0")
    assert 195 <= left <= 210, left
    assert page.locator("#epoch-chip").is_visible()
    assert f"epoch {window + 2}" in (page.text_content("#epoch-chip") or "")
    assert page.text_content("#uptime-since") == \
        "uptime since " + time.strftime("%H:%M", time.localtime(first * EPOCH // SECOND))

    expected = [  # by provider, then node
        # 4 of the 4 epochs; 3 of 4 (the window's second missed); 3 of the 3 that have ended
        {"node": NODE_A, "provider": provider, "units": "4", "uptime": "100.0%",
         "attested": "4", "epochs": "4", "current": "true"},
        {"node": NODE_B, "provider": provider, "units": "4", "uptime": "75.0%",
         "attested": "3", "epochs": "4", "current": "true"},
        {"node": NODE_C, "provider": OTHER_PROVIDER, "units": "8", "uptime": "100.0%",
         "attested": "3", "epochs": "3", "current": "false"},
    ]
    assert node_rows(page) == sorted(expected, key=lambda row: (row["provider"], row["node"]))
    short = page.text_content(f'.provider-node[data-node="{NODE_A}"] .node-address')
    assert short == "0xa1a1…a1a1"
    assert page.text_content(f'.provider-node[data-node="{NODE_C}"] .node-class') == "GPU.H200"

    row = page.locator(f'#provider-deliveries .provider-delivery[data-delivery-id='
                       f'"{delivery.delivery_id}"]')
    assert row.get_attribute("data-status") == "delivering"
    # 4 GPUs x 3 epochs + 2 GPUs x 2 epochs of 6 x 3
    assert (row.get_attribute("data-delivered"), row.get_attribute("data-required")) == \
        ("16", "18")
    assert row.locator(".delivery-pct").text_content() == "88.8%"
    assert "16/18 node-epochs" in (row.text_content() or "")
    width = page.evaluate(
        "(id) => document.querySelector(`#provider-deliveries "
        ".provider-delivery[data-delivery-id=\"${id}\"] "
        ".delivery-bar i`).style.width", delivery.delivery_id)
    assert width.startswith("88.8888")
    assert page.text_content("#deliveries-count") == "1"

    done = page.locator(f'#provider-settled .provider-delivery[data-delivery-id='
                        f'"{delivery.delivery_id}"]')
    assert page.text_content("#settled-count") == "1"
    assert (done.get_attribute("data-delivered"), done.get_attribute("data-required"),
            done.get_attribute("data-seller-paid"),
            done.get_attribute("data-buyer-compensation")) == \
        ("16", "18", str(paid.seller_paid), str(paid.buyer_compensation))
    back = paid.buyer_refund + paid.buyer_compensation
    assert done.locator(".settled-paid").text_content() == \
        f"seller {usdc(paid.seller_paid)} · buyer back {usdc(back)}"
    assert done.locator(".delivery-pct").text_content() == "88.8%"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "providers.png"
    shot.unlink(missing_ok=True)
    page.locator("#providers").scroll_into_view_if_needed()
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_the_route_the_panel_stays_hidden(exchange: ServedExchange,
                                                  open_page: PageOpener) -> None:
    page = open_page()
    wait_for("panel", lambda: page.get_attribute("#providers", "data-state"), "absent")
    assert page.locator("#providers").is_hidden()
    assert page.locator("#epoch-chip").is_hidden()


def test_a_route_answering_404_hides_the_panel(exchange: ServedExchange,
                                               open_page: PageOpener) -> None:
    exchange.call(lambda: exchange.server.routes.__setitem__("/api/providers",
                                                             lambda _query: None))
    page = open_page(allow_404=True)
    wait_for("panel", lambda: page.get_attribute("#providers", "data-state"), "absent")
    assert page.locator("#providers").is_hidden()
