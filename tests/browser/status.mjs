// Drives headless Chromium against a running `gitfleet serve` (or
// `gitfleet up --listen`) with simulated agents; started by
// tests/tests/browser_e2e.rs, which passes:
//
//   GITFLEET_URL        the server's base URL, or "-": launch the browser,
//                       print "browser ready" and read the URL from stdin
//                       (a cold first launch can take longer than a
//                       rollout the pages must catch in progress)
//   GITFLEET_CHROMIUM   the browser binary (Debian's /usr/bin/chromium)
//   GITFLEET_ARTIFACTS  where screenshots go
//   GITFLEET_NODES      how many nodes the fleet has
//   GITFLEET_PEER_NODE  a mesh member whose page must list its peers
//
// Exits non-zero with a message on the first check that fails.

import { chromium } from "playwright-core";
import { check, need, readyThenUrl, shot } from "./common.mjs";

const url = need("GITFLEET_URL");
const nodes = Number(need("GITFLEET_NODES"));
const peerNode = need("GITFLEET_PEER_NODE");

// The counts on the overview's cards.
async function cards(page) {
  return page.$$eval("[data-count]", (els) =>
    Object.fromEntries(
      els.map((e) => [e.dataset.count, Number(e.querySelector("b").textContent)]),
    ),
  );
}

// Every rollout row's progress: "env/name" -> nodes on target.
async function progress(page) {
  return page.$$eval("tr[data-rollout]", (rows) =>
    Object.fromEntries(
      rows.map((r) => [
        `${r.dataset.env}/${r.dataset.rollout}`,
        Number(r.querySelector(".bar").title.split("/")[0]),
      ]),
    ),
  );
}

const browser = await chromium.launch({
  executablePath: need("GITFLEET_CHROMIUM"),
  // Chromium's own network traffic is refused on a closed machine; these
  // keep it to the page under test.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const base = url === "-" ? await readyThenUrl() : url;
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(`${page.url()}: ${e}`));

  // The overview's counts are the API's, and add up to the fleet.
  await page.goto(`${base}/`);
  await page.evaluate(() => {
    window.loadedOnce = true;
  });
  const shown = await cards(page);
  const api = await (await fetch(`${base}/api/status`)).json();
  check(shown.nodes === nodes, `overview shows ${nodes} nodes (shows ${shown.nodes})`);
  check(api.totals.nodes === nodes, `the API counts ${nodes} nodes`);
  const sum = shown.healthy + shown.unhealthy + shown.stale + shown.unreported;
  check(sum === shown.nodes, `health counts add up to the nodes (${sum})`);
  await shot(page, "overview-start");

  // A rollout's bar advances with no reload: the live update swaps the
  // body in, so the marker set on this document survives.
  const before = await progress(page);
  const moving = Object.keys(before).filter((k) => before[k] < nodes);
  check(moving.length > 0, `a rollout is still in progress (${JSON.stringify(before)})`);
  const advanced = await page.waitForFunction(
    (before) => {
      for (const r of document.querySelectorAll("tr[data-rollout]")) {
        const key = `${r.dataset.env}/${r.dataset.rollout}`;
        const done = Number(r.querySelector(".bar").title.split("/")[0]);
        if (key in before && done > before[key]) return key;
      }
      return false;
    },
    before,
    { timeout: 90_000, polling: 200 },
  );
  const key = await advanced.jsonValue();
  check(
    await page.evaluate(() => window.loadedOnce === true),
    `${key}'s progress bar advanced without a reload`,
  );
  await shot(page, "overview-advanced");

  // The counts stay the API's after live updates.
  const later = await cards(page);
  check(later.nodes === nodes, "the live-updated overview still shows every node");

  // A mesh member's page lists its WireGuard peers with handshake age.
  await page.goto(`${base}/nodes/${encodeURIComponent(peerNode)}`);
  await page.waitForFunction(() => document.querySelectorAll("tr.peer").length >= 2, null, {
    timeout: 90_000,
    polling: 200,
  });
  const peers = await page.$$eval("tr.peer", (rows) =>
    rows.map((r) => [...r.cells].map((c) => c.textContent)),
  );
  check(peers.length >= 2, `${peerNode} lists ${peers.length} WireGuard peers`);
  check(
    peers.every((p) => p[3] === "never" || p[3].replace(" (stale)", "").endsWith(" ago")),
    "every peer shows a handshake age",
  );
  await shot(page, "node-peers");

  // From a node's active bundle to the bundle page and its SBOM.
  await page.click("a[href^='/bundles/']");
  await page.waitForSelector("#sbom");
  check(
    (await page.textContent("main")).includes("Verified against its digest"),
    "a bundle page opens from the node and shows its SBOM",
  );
  await shot(page, "bundle");
  check(errors.length === 0, `no script errors (${errors.join("; ")})`);
} finally {
  await browser.close();
}
