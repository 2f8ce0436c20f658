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
// It exits 0 only when every check passed, and writes order.png (and a
// screenshot per failed check) into <artifact_dir>.

import { mkdtempSync, mkdirSync, rmSync, existsSync, readdirSync } from "node:fs";
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

// Everything is bounded: the whole run, and each wait inside it.
const RUN_DEADLINE_MS = 150_000;
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
try {
  ({ chromium } = await import("playwright-core"));
} catch (error) {
  console.error(`web e2e: cannot load playwright-core (${error.message}): run \`npm ci\` in static/ (make deps does)`);
  process.exit(1);
}

mkdirSync(artifactDir, { recursive: true });
for (const stale of readdirSync(artifactDir).filter((name) => name.startsWith("failed-"))) {
  rmSync(join(artifactDir, stale)); // from an earlier run
}
const profileDir = mkdtempSync(join(tmpdir(), "order-page-e2e-"));

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
