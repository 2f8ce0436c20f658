// End-to-end checks of the order page in a real headless Chromium.
//
//   node static/e2e/run.mjs <base_url> <artifact_dir>
//
// The service at <base_url> must already hold the orders named by these
// environment variables (tests/web.rs publishes them):
//   E2E_ORDER_UID     the canonical order (testdata/model.json), default b563feb7b2b84b6test
//   E2E_XSS_UIDS      comma-separated uids of orders whose delivery.name or items[0].name
//                     holds markup that sets window.__xss if it ever runs, e.g.
//                     `<img src=x onerror="window.__xss=1">` (optional)
//   E2E_KNOWN_UIDS    comma-separated uids of every stored order, for "Get random" (optional)
//   CHROMIUM          the browser, default /usr/bin/chromium
//   E2E_README_SCREENSHOT  where to write the README's screenshot (static/screenshot.png), if set
//   E2E_LIVE_REJECTIONS    JSON [{"kind":..., "payload":...}] of dead letters the real service
//                     holds (tests/web.rs publishes hostile messages for them): then only
//                     the "live:" checks of the Rejected view run, against the real
//                     GET /rejections, nothing intercepted
// It exits 0 only when every check passed, and writes order.png (and a
// screenshot per failed check) into <artifact_dir>.
//
// Every view (intro, order, not found, malformed, empty, rejected and its empty
// and unavailable variants) is also checked with axe-core at 1280 and 390 px wide,
// and in the dark palette: zero WCAG 2.x A/AA and best-practice violations.
//
// The Rejected view's checks answer `GET /rejections` from playwright with the
// fixture JSON below (contract C3), because the service does not serve that
// route yet; only those requests are intercepted, everything else is the real
// service.

import { mkdtempSync, mkdirSync, rmSync, existsSync, readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [baseArg, artifactDir] = process.argv.slice(2);
if (!baseArg || !artifactDir) {
  console.error("usage: node static/e2e/run.mjs <base_url> <artifact_dir>");
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, "");
const orderUid = process.env.E2E_ORDER_UID || "b563feb7b2b84b6test";
const xssUids = (process.env.E2E_XSS_UIDS || "").split(",").filter(Boolean);
const knownUids = new Set([orderUid, ...xssUids, ...(process.env.E2E_KNOWN_UIDS || "").split(",").filter(Boolean)]);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const liveRejections = process.env.E2E_LIVE_REJECTIONS ? JSON.parse(process.env.E2E_LIVE_REJECTIONS) : null;
/** Checks that run in the live-rejections mode besides the "live:" ones. */
const ALWAYS = new Set(["no script errors and no CSP violations in any page"]);

// Everything is bounded: the whole run, and each wait inside it.
const RUN_DEADLINE_MS = 240_000; // some 50 checks, 27 of them axe runs
const STEP_TIMEOUT_MS = 15_000;
setTimeout(() => {
  console.error(`web e2e: gave up after ${RUN_DEADLINE_MS / 1000} s`);
  process.exit(1);
}, RUN_DEADLINE_MS).unref();

if (!existsSync(chromiumPath)) {
  console.error(`web e2e: no browser at ${chromiumPath}: install it with \`apt-get install -y chromium\` (make deps does)`);
  process.exit(1);
}
let chromium;
let axeSource;
try {
  ({ chromium } = await import("playwright-core"));
  axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
} catch (error) {
  console.error(`web e2e: cannot load playwright-core or axe-core (${error.message}): run \`npm ci\` in static/ (make deps does)`);
  process.exit(1);
}

mkdirSync(artifactDir, { recursive: true });
for (const stale of readdirSync(artifactDir).filter((name) => name.startsWith("failed-"))) {
  rmSync(join(artifactDir, stale)); // from an earlier run
}
const profileDir = mkdtempSync(join(tmpdir(), "order-page-e2e-"));

// ---- The /rejections fixture (contract C3), served by playwright, not the service.
const XSS_REASON = `missing field <img src=x onerror="window.__xss=3">`;
const XSS_PAYLOAD = `<script>window.__xss=4</script><img src=x onerror="window.__xss=5">{"order_uid":`;
const FIXTURE_REJECTIONS = [
  {
    id: 9,
    received_at: "2026-12-01T19:00:03.123456Z",
    kind: "missing_field",
    reason: XSS_REASON,
    stream_sequence: 42,
    payload_length: XSS_PAYLOAD.length,
    payload: XSS_PAYLOAD,
    payload_truncated: false,
  },
  {
    id: 8,
    received_at: "2026-12-01T19:00:02.5Z",
    kind: "not_utf8",
    reason: "not UTF-8: invalid byte at offset 3",
    stream_sequence: 41,
    payload_length: 6,
    payload: "abc\\xff\\xfe!",
    payload_truncated: false,
  },
  {
    id: 7,
    received_at: "2026-12-01T19:00:01Z",
    kind: "not_json",
    reason: "not JSON: expected value at line 1 column 1",
    stream_sequence: null,
    payload_length: 9000,
    payload: "x".repeat(4096),
    payload_truncated: true,
  },
  {
    id: 3,
    received_at: "2026-12-01T18:59:00Z",
    kind: "not_json",
    reason: "not JSON: EOF while parsing an object at line 1 column 12",
    stream_sequence: 12,
    payload_length: 12,
    payload: '{"order_uid"',
    payload_truncated: false,
  },
];
/** Requests the fixture answered, to check what the page asked for. */
const rejectionRequests = [];

/**
 * Answers `/rejections` as C3 says: newest first, `limit` per page, next_cursor
 * the id to continue below (a string) or null, `kind` filters, an unknown kind is 400.
 */
async function serveRejections(route) {
  const url = new URL(route.request().url());
  rejectionRequests.push(url.search);
  const limit = Number(url.searchParams.get("limit") ?? "100");
  const cursor = url.searchParams.get("cursor");
  const kind = url.searchParams.get("kind");
  const json = (status, body) => route.fulfill({ status, contentType: "application/json", body: JSON.stringify(body) });
  if (kind !== null && !/^[a-z0-9_]+$/.test(kind)) return json(400, { error: `unknown kind ${JSON.stringify(kind)}` });
  // Pages of two, whatever the page asks for, so that "Show older" has work to do.
  const size = Math.min(limit, 2);
  const rows = FIXTURE_REJECTIONS.filter((r) => (kind === null || r.kind === kind) && (cursor === null || r.id < Number(cursor)));
  const pageRows = rows.slice(0, size);
  const next = rows.length > size ? String(pageRows[pageRows.length - 1].id) : null;
  return json(200, { rejections: pageRows, next_cursor: next });
}

const results = [];
function fail(message) {
  throw new Error(message);
}
function expect(condition, message) {
  if (!condition) fail(message);
}

let context;
let page;
const pageErrors = [];
const cspViolations = [];

async function check(name, body) {
  if (liveRejections !== null && !name.startsWith("live:") && !ALWAYS.has(name)) return;
  if (liveRejections === null && name.startsWith("live:")) return;
  const started = Date.now();
  try {
    await body();
    results.push({ name, ok: true });
    console.log(`ok   - ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    results.push({ name, ok: false });
    console.log(`FAIL - ${name}: ${error.message.split("\n")[0]}`);
    const shot = join(artifactDir, `failed-${name.replace(/[^a-z0-9]+/gi, "-").toLowerCase()}.png`);
    await page?.screenshot({ path: shot, fullPage: true }).catch(() => {});
  }
}

const result = () => page.locator("#result");
const view = (name) => page.locator(`#result [data-view="${name}"]`);
const fieldText = (key) => page.locator(`#result [data-field="${key}"]`).first().textContent();
const urlId = () => new URL(page.url()).searchParams.get("id");

async function search(uid) {
  await page.locator("#order-uid").fill(uid);
  await page.locator("#order-uid").press("Enter");
}

/** What axe-core must find nothing of: WCAG 2.0/2.1/2.2 A and AA, and its best practices. */
const AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"];

/**
 * Runs axe-core on the page as it is. The source goes in through the DevTools
 * protocol (page.evaluate), which the page's CSP does not govern, so the page's
 * own policy stays as strict as it is served.
 */
async function expectAccessible(label) {
  // Let finite transitions end first: `.result` fades in from opacity 0.45
  // over 0.15 s, and axe measuring mid-fade saw a contrast failure once.
  await page.evaluate(() => Promise.all(document.getAnimations()
    .filter((a) => a.effect?.getTiming().iterations !== Infinity)
    .map((a) => a.finished.catch(() => {}))));
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(axeSource);
  const violations = await page.evaluate(
    (tags) => window.axe.run(document, { runOnly: { type: "tag", values: tags }, resultTypes: ["violations"] })
      .then((found) => found.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(" ")) }))),
    AXE_TAGS,
  );
  if (violations.length > 0) {
    const lines = violations.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.targets.slice(0, 3).join(", ")}`);
    fail(`${label}: ${violations.length} axe violation(s): ${lines.join("; ")}`);
  }
}

async function expectOrder(uid) {
  await view("order").waitFor({ state: "visible" });
  const shown = await fieldText("order_uid");
  expect(shown === uid, `expected order ${uid} on screen, found ${JSON.stringify(shown)}`);
  expect(await result().getAttribute("aria-busy") === null, "result still marked aria-busy after loading");
}

try {
  await check("headers on / carry CSP and nosniff", async () => {
    const response = await fetch(`${base}/`);
    expect(response.status === 200, `GET / answered ${response.status}`);
    const csp = response.headers.get("content-security-policy") || "";
    expect(csp.includes("script-src 'self'"), `Content-Security-Policy missing or weak: ${JSON.stringify(csp)}`);
    expect(csp.includes("default-src 'none'"), `Content-Security-Policy lacks default-src 'none': ${JSON.stringify(csp)}`);
    const nosniff = response.headers.get("x-content-type-options");
    expect(nosniff === "nosniff", `X-Content-Type-Options is ${JSON.stringify(nosniff)}`);
    const html = await response.text();
    expect(html.includes('src="/assets/app.js"'), "index.html does not load /assets/app.js");
    for (const asset of ["/assets/app.js", "/assets/style.css", "/favicon.svg"]) {
      const assetResponse = await fetch(`${base}${asset}`);
      expect(assetResponse.status === 200, `GET ${asset} answered ${assetResponse.status}`);
      expect(assetResponse.headers.get("x-content-type-options") === "nosniff", `${asset} lacks nosniff`);
    }
    const js = await fetch(`${base}/assets/app.js`);
    expect(/javascript/.test(js.headers.get("content-type") || ""), `app.js served as ${js.headers.get("content-type")}`);
  });

  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1280, height: 900 },
    locale: "en-US",
    timezoneId: "UTC",
    colorScheme: "light",
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  // Record CSP violations of every document: inline code or foreign hosts would show up here.
  await context.exposeBinding("__reportCspViolation", (_source, text) => cspViolations.push(text));
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (event) => {
      window.__reportCspViolation(`${event.violatedDirective} blocked ${event.blockedURI || "inline"} on ${location.href}`);
    });
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (error) => pageErrors.push(error.message));

  await check("page loads with the search form and no errors", async () => {
    await page.goto(`${base}/`);
    await page.getByLabel("Order UID").waitFor();
    await view("intro").waitFor();
    const styled = await page.evaluate(() => getComputedStyle(document.querySelector(".search")).borderRadius);
    expect(styled !== "0px", "style.css did not apply");
  });

  await check("search shows the canonical order", async () => {
    await search(orderUid);
    await expectOrder(orderUid);
    expect(urlId() === orderUid, `URL is ${page.url()}`);
    expect((await fieldText("track_number")) === "WBILMTESTTRACK", "track number not shown");
    expect((await fieldText("items.0.name")) === "Mascaras", "item name not shown");
    const amount = await fieldText("payment.amount");
    expect(/1,817/.test(amount) && /\$|USD/.test(amount), `amount shown as ${JSON.stringify(amount)}`);
    expect((await fieldText("delivery.name")) === "Test Testov", "delivery name not shown");
    expect(/Nov 26, 2021/.test(await fieldText("payment.payment_dt")), "payment_dt not shown as a date");
    expect(/Nov 26, 2021/.test(await fieldText("date_created")), "date_created not shown as a date");
    const text = await result().innerText();
    for (const expected of ["Vivienne Sabo", "meest", "Kiryat Mozkin", "wbpay", "−30%", "202"]) {
      expect(text.includes(expected), `${JSON.stringify(expected)} not on the page`);
    }
    expect(/Showing order/.test(await page.locator("#status").innerText()), "status line does not say the order is shown");
    await page.screenshot({ path: join(artifactDir, "order.png"), fullPage: true });
    const readmeShot = process.env.E2E_README_SCREENSHOT;
    if (readmeShot) {
      // The README's picture: no focus ring, a width that stays legible when scaled down.
      await page.locator("#order-uid").blur();
      await page.setViewportSize({ width: 1100, height: 800 });
      await page.screenshot({ path: readmeShot, fullPage: true });
      await page.setViewportSize({ width: 1280, height: 900 });
  await page.emulateMedia({ colorScheme: "light" });
    }
  });

  await check("raw JSON view opens and holds every field", async () => {
    const raw = view("raw-json");
    expect(!(await raw.evaluate((details) => details.open)), "raw JSON should start collapsed");
    await raw.locator("summary").click();
    const json = JSON.parse(await raw.locator("pre").innerText());
    expect(json.order_uid === orderUid && json.payment.amount === 1817, "raw JSON does not match the order");
    await raw.locator("summary").click();
  });

  await check("unknown id shows the not-found view", async () => {
    const missing = `no-such-order-${Date.now()}`;
    await search(missing);
    await view("not-found").waitFor();
    expect((await view("not-found").innerText()).includes(missing), "not-found view does not name the id");
    expect(urlId() === missing, "URL does not follow the search");
  });

  await check("malformed id shows the 400 message", async () => {
    await search("bad id!");
    await view("malformed").waitFor();
    const text = await view("malformed").innerText();
    expect(/not a valid order UID/.test(text), "malformed view lacks its title");
    expect(/The service said/.test(text), "malformed view does not quote the service's 400 error");
    expect(await page.locator("#order-uid").getAttribute("aria-invalid") === "true", "input not marked aria-invalid");
    await search("a".repeat(65));
    await view("malformed").waitFor();
    expect(/The service said/.test(await view("malformed").innerText()), "65-character id not refused by the service");
  });

  await check("back and forward buttons walk the lookups", async () => {
    await page.goBack();
    await view("malformed").waitFor();
    expect(urlId() === "bad id!", `after back the URL is ${page.url()}`);
    await page.goBack();
    await view("not-found").waitFor();
    await page.goBack();
    await expectOrder(orderUid);
    expect(await page.locator("#order-uid").inputValue() === orderUid, "input does not follow the back button");
    await page.goForward();
    await view("not-found").waitFor();
    await page.goBack();
    await expectOrder(orderUid);
  });

  await check("empty search asks for an id", async () => {
    await search("   ");
    expect(/Type an order UID/.test(await page.locator("#status").innerText()), "no hint for an empty search");
    await expectOrder(orderUid);
  });

  await check("Get random fills in a stored id and loads it", async () => {
    await page.goto(`${base}/`);
    await view("intro").waitFor();
    await page.getByRole("button", { name: "Get random" }).click();
    await view("order").waitFor();
    const picked = await page.locator("#order-uid").inputValue();
    expect(knownUids.has(picked), `random pick ${JSON.stringify(picked)} is not a published order`);
    await expectOrder(picked);
    expect(urlId() === picked, "URL does not show the random pick");
    expect(/random pick/.test(await page.locator("#status").innerText()), "status does not say it was a random pick");
  });

  await check("a shared link opens straight on the order", async () => {
    const fresh = await context.newPage();
    const previous = page;
    page = fresh;
    try {
      await page.goto(`${base}/?id=${encodeURIComponent(orderUid)}`);
      await expectOrder(orderUid);
      expect(await page.locator("#order-uid").inputValue() === orderUid, "input not filled from the link");
      expect((await page.title()).includes(orderUid), "title does not name the order");
    } finally {
      await fresh.close();
      page = previous;
    }
  });

  await check("loading state is visible while the server is slow", async () => {
    let release;
    const released = new Promise((resolve) => (release = resolve));
    const pattern = `**/orders/${orderUid}`;
    await page.route(pattern, async (route) => {
      await released;
      await route.continue();
    });
    try {
      await page.goto(`${base}/`);
      await search(orderUid);
      await page.locator("#status.status-loading").waitFor();
      expect(/Loading order/.test(await page.locator("#status").innerText()), "no loading message");
      expect(await result().getAttribute("aria-busy") === "true", "result not aria-busy while loading");
      release();
      await expectOrder(orderUid);
    } finally {
      release();
      await page.unroute(pattern);
    }
  });

  await check("server unreachable shows an error with a retry", async () => {
    const pattern = "**/orders/**";
    await page.route(pattern, (route) => route.abort("connectionrefused"));
    try {
      await page.goto(`${base}/`);
      await search(orderUid);
      await view("unreachable").waitFor();
      expect(/Cannot reach the order service/.test(await view("unreachable").innerText()), "unreachable view lacks its title");
    } finally {
      await page.unroute(pattern);
    }
    await view("unreachable").getByRole("button", { name: "Try again" }).click();
    await expectOrder(orderUid);
  });

  for (const uid of xssUids) {
    await check(`order ${uid}: markup in its fields stays text`, async () => {
      await page.goto(`${base}/?id=${encodeURIComponent(uid)}`);
      await expectOrder(uid);
      // Whatever markup the order carries must show up as the very same text.
      const stored = await (await fetch(`${base}/orders/${encodeURIComponent(uid)}`)).json();
      const expected = { "delivery.name": stored.delivery.name, "items.0.name": stored.items[0].name };
      expect(Object.values(expected).some((text) => text.includes("<")), "this order carries no markup to test");
      for (const [key, text] of Object.entries(expected)) {
        const shown = await fieldText(key);
        expect(shown === text, `${key} shown as ${JSON.stringify(shown)}, stored as ${JSON.stringify(text)}`);
      }
      await view("raw-json").locator("summary").click();
      const raw = JSON.parse(await view("raw-json").locator("pre").innerText());
      expect(raw.delivery.name === expected["delivery.name"] && raw.items[0].name === expected["items.0.name"], "raw JSON does not hold the fields as stored");
      await page.waitForTimeout(300); // give an injected onerror time to fire
      expect(await page.locator("#result img, #result script").count() === 0, "markup from the order became elements");
      const xss = await page.evaluate(() => window.__xss);
      expect(xss === undefined, `injected code ran: window.__xss = ${xss}`);
    });
  }

  // ---- The Rejected view, against the /rejections fixture (the route does not exist yet).
  await check("Rejected view (fixture /rejections) lists dead letters newest first, reasons prominent", async () => {
    await page.route("**/rejections**", serveRejections);
    try {
      rejectionRequests.length = 0;
      await page.goto(`${base}/`);
      await view("intro").waitFor();
      await page.getByRole("navigation", { name: "Service" }).getByRole("link", { name: "Rejected" }).click();
      await view("rejected").waitFor();
      expect(new URL(page.url()).searchParams.get("view") === "rejected", `URL is ${page.url()}`);
      expect(await page.getByRole("heading", { level: 1 }).innerText() === "Rejected messages", "no visible h1 for the view");
      expect(await page.locator("#search-form").isHidden(), "the order search stays on the Rejected view");
      const reasons = await page.locator('#result [data-field="reason"]').allTextContents();
      expect(reasons.length === 2 && reasons[0] === XSS_REASON, `first page reasons: ${JSON.stringify(reasons)}`);
      const tags = await page.locator('#result [data-field="reason"]').evaluateAll((nodes) => nodes.map((n) => n.tagName));
      expect(tags.every((tag) => tag === "H2"), `reasons are not headings: ${tags}`);
      const payloads = await page.locator('#result [data-field="payload"]').allTextContents();
      expect(payloads[0] === XSS_PAYLOAD, `payload shown as ${JSON.stringify(payloads[0])}`);
      expect(payloads[1] === "abc\\xff\\xfe!", `escaped payload shown as ${JSON.stringify(payloads[1])}`);
      expect(/Showing 2 rejected messages/.test(await page.locator("#status").innerText()), "status does not count the list");
      expect(rejectionRequests.every((q) => new URLSearchParams(q).get("limit") === "50"), `requests: ${rejectionRequests}`);
      await page.screenshot({ path: join(artifactDir, "rejected.png"), fullPage: true });

      await page.getByRole("button", { name: "Show older" }).click();
      await page.locator('#result [data-field="reason"]').nth(3).waitFor();
      expect(await page.getByRole("button", { name: "Show older" }).count() === 0, "Show older stays after the last page");
      const last = rejectionRequests[rejectionRequests.length - 1];
      expect(new URLSearchParams(last).get("cursor") === "8", `older page asked with ${last}`);
      const truncated = await page.locator("#result .rejection").nth(2).innerText();
      expect(/first 4,096 bytes of 9,000 bytes/.test(truncated), "truncated payload not said to be truncated");
      expect(/not from the stream/.test(truncated), "null stream_sequence not shown");
      expect(/all of them/.test(await page.locator("#status").innerText()), "status does not say the list is complete");
    } finally {
      await page.unroute("**/rejections**", serveRejections);
    }
  });

  await check("Rejected view (fixture /rejections): markup in reasons and payloads stays text", async () => {
    await page.route("**/rejections**", serveRejections);
    try {
      await page.goto(`${base}/?view=rejected`);
      await view("rejected").waitFor();
      await page.waitForTimeout(300); // give an injected onerror time to fire
      expect(await page.locator("#result img, #result script").count() === 0, "markup from a dead letter became elements");
      const xss = await page.evaluate(() => window.__xss);
      expect(xss === undefined, `injected code ran: window.__xss = ${xss}`);
    } finally {
      await page.unroute("**/rejections**", serveRejections);
    }
  });

  await check("Rejected view (fixture /rejections) filters by kind, in the URL and the request", async () => {
    await page.route("**/rejections**", serveRejections);
    try {
      rejectionRequests.length = 0;
      await page.goto(`${base}/?view=rejected`);
      await view("rejected").waitFor();
      await page.getByLabel("Kind").selectOption("not_json");
      await page.waitForURL((url) => url.searchParams.get("kind") === "not_json");
      await page.locator('#result [data-field="kind"]').first().waitFor();
      await page.waitForFunction(() => [...document.querySelectorAll('#result [data-field="kind"]')].every((n) => n.textContent === "not_json"));
      const kinds = await page.locator('#result [data-field="kind"]').allTextContents();
      expect(kinds.length === 2, `kinds shown: ${kinds}`);
      const last = rejectionRequests[rejectionRequests.length - 1];
      expect(new URLSearchParams(last).get("kind") === "not_json", `request was ${last}`);
      expect((await page.title()).includes("not_json"), "title does not name the kind");
      await page.goBack();
      await page.waitForFunction(() => document.querySelectorAll('#result [data-field="kind"]').length === 2 && document.querySelector('#result [data-field="kind"]').textContent === "missing_field");
      expect(await page.getByLabel("Kind").inputValue() === "", "the filter does not follow the back button");
      await page.goto(`${base}/?view=rejected&kind=redelivery_limit`);
      await view("rejected-empty").waitFor();
      expect(/No rejected messages of kind redelivery_limit/.test(await view("rejected-empty").innerText()), "empty filter result not said");
    } finally {
      await page.unroute("**/rejections**", serveRejections);
    }
  });

  await check("Rejected view says so when the port does not serve /rejections (404)", async () => {
    const pattern = "**/rejections**";
    await page.route(pattern, (route) => route.fulfill({ status: 404, contentType: "application/json", body: JSON.stringify({ error: "not found", path: "/rejections" }) }));
    try {
      await page.goto(`${base}/?view=rejected`);
      await view("rejected-unavailable").waitFor();
      expect(/admin port/.test(await view("rejected-unavailable").innerText()), "the 404 view does not point to the admin port");
    } finally {
      await page.unroute(pattern);
    }
  });

  // ---- The Rejected view against the real GET /rejections (E2E_LIVE_REJECTIONS set).
  await check("live: GET /rejections answers as contract C3 says", async () => {
    const response = await fetch(`${base}/rejections?limit=100`);
    expect(response.status === 200, `GET /rejections answered ${response.status}`);
    const body = await response.json();
    expect(Array.isArray(body.rejections), `no rejections array: ${JSON.stringify(body).slice(0, 200)}`);
    expect(body.next_cursor === null || typeof body.next_cursor === "string", `next_cursor is ${JSON.stringify(body.next_cursor)}`);
    for (const { kind, payload } of liveRejections) {
      expect(body.rejections.some((r) => r.kind === kind && r.payload === payload), `no ${kind} dead letter with payload ${JSON.stringify(payload)}`);
    }
  });

  await check("live: the Rejected view shows the real dead letters as text", async () => {
    await page.goto(`${base}/?view=rejected`);
    await view("rejected").waitFor();
    const shown = await page.locator("#result .rejection").evaluateAll((entries) => entries.map((entry) => ({
      kind: entry.querySelector('[data-field="kind"]').textContent,
      reason: entry.querySelector('[data-field="reason"]').textContent,
      payload: entry.querySelector('[data-field="payload"]').textContent,
    })));
    for (const { kind, payload } of liveRejections) {
      expect(shown.some((r) => r.kind === kind && r.payload === payload), `${kind} dead letter ${JSON.stringify(payload)} not shown as text; shown: ${JSON.stringify(shown).slice(0, 300)}`);
    }
    expect(shown.every((r) => r.reason !== ""), "a dead letter without its reason");
    await page.waitForTimeout(300); // give an injected onerror time to fire
    expect(await page.locator("#result img, #result script, #result b").count() === 0, "markup from a dead letter became elements");
    const xss = await page.evaluate(() => window.__xss);
    expect(xss === undefined, `injected code ran: window.__xss = ${xss}`);
    await page.screenshot({ path: join(artifactDir, "rejected-live.png"), fullPage: true });
    await expectAccessible("live Rejected view");
  });

  await check("live: the kind filter asks the real service", async () => {
    const wanted = liveRejections[0].kind;
    await page.goto(`${base}/?view=rejected`);
    await view("rejected").waitFor();
    await page.getByLabel("Kind").selectOption(wanted);
    await page.waitForURL((url) => url.searchParams.get("kind") === wanted);
    await page.waitForFunction((kind) => {
      const kinds = [...document.querySelectorAll('#result [data-field="kind"]')].map((n) => n.textContent);
      return kinds.length > 0 && kinds.every((k) => k === kind);
    }, wanted);
    const payloads = await page.locator('#result [data-field="payload"]').allTextContents();
    expect(payloads.includes(liveRejections[0].payload), `filtered list lacks ${JSON.stringify(liveRejections[0].payload)}`);
  });

  // ---- Get random: a 404 from an empty store keeps the button, a 404 for the route hides it.
  await check("Get random is hidden when /random-order is not served on this port", async () => {
    // What the public port answers with ADMIN_ADDR set (contract C4): the generic 404.
    const pattern = "**/random-order";
    await page.route(pattern, (route) => route.fulfill({ status: 404, contentType: "application/json", body: JSON.stringify({ error: "not found", path: "/random-order" }) }));
    try {
      await page.goto(`${base}/`);
      await view("intro").waitFor();
      await page.locator("#random-button").waitFor({ state: "hidden" });
      await page.waitForFunction(() => !document.querySelector('#result [data-view="intro"]').textContent.includes("Get random"));
      await search(`no-such-order-${Date.now()}`);
      await view("not-found").waitFor();
      expect(!(await view("not-found").innerText()).includes("Get random"), "not-found view still offers Get random");
    } finally {
      await page.unroute(pattern);
    }
  });

  await check("an empty store keeps Get random and says there is nothing to pick", async () => {
    const pattern = "**/random-order";
    await page.route(pattern, (route) => route.fulfill({ status: 404, contentType: "application/json", body: JSON.stringify({ error: "no orders stored yet" }) }));
    try {
      await page.goto(`${base}/`);
      await view("intro").waitFor();
      await page.waitForTimeout(300); // the start-up probe has answered by now
      await page.getByRole("button", { name: "Get random" }).click();
      await view("empty").waitFor();
      expect(await page.locator("#random-button").isVisible(), "Get random hidden on an empty store");
    } finally {
      await page.unroute(pattern);
    }
  });

  // ---- axe-core on every view at both widths.
  const emptyStore = (route) => route.fulfill({ status: 404, contentType: "application/json", body: JSON.stringify({ error: "no orders stored yet" }) });
  const notServed = (route) => route.fulfill({ status: 404, contentType: "application/json", body: JSON.stringify({ error: "not found", path: "/rejections" }) });
  const noRejections = (route) => route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify({ rejections: [], next_cursor: null }) });
  const a11yViews = [
    ["intro", async () => { await page.goto(`${base}/`); await view("intro").waitFor(); }],
    ["order", async () => { await page.goto(`${base}/?id=${encodeURIComponent(orderUid)}`); await expectOrder(orderUid); }],
    ["order with raw JSON open", async () => { await page.goto(`${base}/?id=${encodeURIComponent(orderUid)}`); await expectOrder(orderUid); await view("raw-json").locator("summary").click(); }],
    ["not found", async () => { await page.goto(`${base}/?id=no-such-order-a11y`); await view("not-found").waitFor(); }],
    ["malformed", async () => { await page.goto(`${base}/?id=${encodeURIComponent("bad id!")}`); await view("malformed").waitFor(); }],
    ["empty", async () => {
      await page.route("**/random-order", emptyStore);
      try {
        await page.goto(`${base}/`);
        await page.getByRole("button", { name: "Get random" }).click();
        await view("empty").waitFor();
      } finally {
        await page.unroute("**/random-order", emptyStore);
      }
    }],
    ["rejected (fixture)", async () => { await page.route("**/rejections**", serveRejections); await page.goto(`${base}/?view=rejected`); await view("rejected").waitFor(); }],
    ["rejected, none (fixture)", async () => { await page.route("**/rejections**", noRejections); await page.goto(`${base}/?view=rejected`); await view("rejected-empty").waitFor(); }],
    ["rejected, not served (fixture)", async () => { await page.route("**/rejections**", notServed); await page.goto(`${base}/?view=rejected`); await view("rejected-unavailable").waitFor(); }],
  ];
  // The page follows prefers-color-scheme, so the dark palette is checked too (contrast).
  for (const [width, height, scheme] of [[1280, 900, "light"], [390, 844, "light"], [1280, 900, "dark"]]) {
    for (const [name, open] of a11yViews) {
      await check(`axe: ${name} at ${width} px${scheme === "dark" ? ", dark" : ""}`, async () => {
        await page.setViewportSize({ width, height });
        await page.emulateMedia({ colorScheme: scheme });
        try {
          await open();
          await expectAccessible(`${name} at ${width} px`);
          const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
          expect(overflow <= 0, `page scrolls sideways by ${overflow}px`);
          if (name === "rejected (fixture)" && scheme === "dark") {
            await page.screenshot({ path: join(artifactDir, "rejected-dark.png"), fullPage: true });
          }
          if (name === "rejected (fixture)" && width === 390) {
            await page.screenshot({ path: join(artifactDir, "rejected-narrow.png"), fullPage: true });
          }
        } finally {
          await page.unrouteAll({ behavior: "wait" });
        }
      });
    }
  }
  await page.setViewportSize({ width: 1280, height: 900 });

  await check("no script errors and no CSP violations in any page", async () => {
    expect(cspViolations.length === 0, `CSP violations: ${cspViolations.join("; ")}`);
    expect(pageErrors.length === 0, `uncaught errors: ${pageErrors.join("; ")}`);
  });

  await check("narrow screen screenshot", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${base}/?id=${encodeURIComponent(orderUid)}`);
    await expectOrder(orderUid);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow <= 0, `page scrolls sideways by ${overflow}px at 390px wide`);
    await page.screenshot({ path: join(artifactDir, "order-narrow.png"), fullPage: true });
  });
} finally {
  await context?.close().catch(() => {});
  rmSync(profileDir, { recursive: true, force: true });
}

const failed = results.filter((r) => !r.ok).length;
console.log(`web e2e: ${results.length - failed} of ${results.length} checks passed, artifacts in ${artifactDir}`);
process.exit(failed === 0 ? 0 : 1);
