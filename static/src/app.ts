// The order lookup page of order-service.
//
// It reads `?id=` from the address bar, asks `GET /orders/{uid}` and shows the
// order; "Get random" asks `GET /random-order` first. `?view=rejected&kind=`
// shows the dead letters of `GET /rejections` instead. Every string that comes
// from an order or a rejected message is attacker-controlled, so it reaches the
// page only through `textContent` and DOM nodes built here: this file never
// assigns innerHTML.

type Json = null | boolean | number | string | Json[] | JsonObject;
interface JsonObject {
  [key: string]: Json;
}

/** The contract's rule for an order_uid; the server is the judge, this only words the hint. */
const UID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
/** Longer input is refused here rather than sent as a giant URL. */
const MAX_SENT_UID_CHARS = 256;
const REQUEST_TIMEOUT_MS = 10_000;

// Fields the page lays out itself; anything else is listed under "Other fields".
const KNOWN_ORDER_FIELDS = new Set([
  "order_uid", "track_number", "entry", "delivery", "payment", "items", "locale",
  "internal_signature", "customer_id", "delivery_service", "shardkey", "sm_id",
  "date_created", "oof_shard",
]);
const KNOWN_DELIVERY_FIELDS = new Set(["name", "phone", "zip", "city", "address", "region", "email"]);
const KNOWN_PAYMENT_FIELDS = new Set([
  "transaction", "request_id", "currency", "provider", "amount", "payment_dt", "bank",
  "delivery_cost", "goods_total", "custom_fee",
]);
const KNOWN_ITEM_FIELDS = new Set([
  "chrt_id", "track_number", "price", "rid", "name", "sale", "size", "total_price", "nm_id",
  "brand", "status",
]);

// ---------------------------------------------------------------------------
// DOM helpers: the only way this file creates content.

type Child = Node | string | null | undefined | false;

interface Props {
  className?: string;
  attrs?: Record<string, string>;
}

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (props.className !== undefined) element.className = props.className;
  if (props.attrs !== undefined) {
    for (const [name, value] of Object.entries(props.attrs)) element.setAttribute(name, value);
  }
  append(element, children);
  return element;
}

function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    // A string becomes a Text node: markup in it stays text.
    parent.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

function byId<T extends HTMLElement>(id: string, type: { new (): T }): T {
  const element = document.getElementById(id);
  if (!(element instanceof type)) throw new Error(`page is missing #${id}`);
  return element;
}

// ---------------------------------------------------------------------------
// Reading loosely typed JSON safely.

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function field(object: JsonObject, key: string): Json | undefined {
  return Object.prototype.hasOwnProperty.call(object, key) ? object[key] : undefined;
}

function objectField(object: JsonObject, key: string): JsonObject {
  const value = field(object, key);
  return isObject(value) ? value : {};
}

function stringField(object: JsonObject, key: string): string {
  const value = field(object, key);
  return typeof value === "string" ? value : "";
}

/** A value as one line of text: strings as they are, anything else as compact JSON. */
function asText(value: Json | undefined): string {
  if (value === undefined) return "";
  if (typeof value === "string") return value;
  if (typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value)) {
    return `≈${JSON.stringify(value)} (rounded here; exact in Raw JSON)`;
  }
  return JSON.stringify(value);
}

// ---------------------------------------------------------------------------
// Formatting.

const numberFormat = new Intl.NumberFormat(undefined);
const dateFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  timeZoneName: "short",
});
const moneyFormats = new Map<string, Intl.NumberFormat | null>();

function moneyFormat(currency: string): Intl.NumberFormat | null {
  let format = moneyFormats.get(currency);
  if (format === undefined) {
    try {
      format = new Intl.NumberFormat(undefined, {
        style: "currency",
        currency,
        minimumFractionDigits: 0,
        maximumFractionDigits: 2,
      });
    } catch {
      format = null; // not an ISO 4217 code: shown as "<number> <code>" instead
    }
    moneyFormats.set(currency, format);
  }
  return format;
}

function formatMoney(value: Json | undefined, currency: string): string {
  if (typeof value !== "number") return asText(value);
  const format = moneyFormat(currency);
  if (format !== null) return format.format(value);
  return currency === "" ? numberFormat.format(value) : `${numberFormat.format(value)} ${currency}`;
}

function formatNumber(value: Json | undefined): string {
  return typeof value === "number" ? numberFormat.format(value) : asText(value);
}

/** A <time> for an RFC 3339 string, or the text as it is when it does not parse. */
function timeFromIso(value: Json | undefined): Node | string {
  const text = asText(value);
  const date = new Date(text);
  if (text === "" || Number.isNaN(date.getTime())) return text;
  return h("time", { attrs: { datetime: date.toISOString(), title: text } }, dateFormat.format(date));
}

/** A <time> for unix seconds (payment.payment_dt). */
function timeFromUnixSeconds(value: Json | undefined): Node | string {
  if (typeof value !== "number") return asText(value);
  const date = new Date(value * 1000);
  if (Number.isNaN(date.getTime())) return formatNumber(value);
  return h(
    "time",
    { attrs: { datetime: date.toISOString(), title: `unix time ${value}` } },
    dateFormat.format(date),
  );
}

/**
 * Re-indents JSON text without parsing its numbers, so the raw view shows exactly
 * what the server sent (a JavaScript number would round integers above 2^53).
 */
function prettyJson(text: string): string {
  const indentUnit = "  ";
  let out = "";
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charAt(i);
    if (inString) {
      out += c;
      if (c === "\\") {
        out += text.charAt(i + 1);
        i++;
      } else if (c === '"') {
        inString = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        inString = true;
        out += c;
        break;
      case "{":
      case "[": {
        const rest = text.slice(i + 1).trimStart();
        const close = c === "{" ? "}" : "]";
        if (rest.startsWith(close)) {
          out += c + close;
          i = text.indexOf(close, i + 1);
        } else {
          depth++;
          out += c + "\n" + indentUnit.repeat(depth);
        }
        break;
      }
      case "}":
      case "]":
        depth = Math.max(0, depth - 1);
        out += "\n" + indentUnit.repeat(depth) + c;
        break;
      case ",":
        out += ",\n" + indentUnit.repeat(depth);
        break;
      case ":":
        out += ": ";
        break;
      case " ":
      case "\n":
      case "\r":
      case "\t":
        break;
      default:
        out += c;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// HTTP.

type HttpResult =
  | { kind: "response"; status: number; body: Json | undefined; text: string }
  | { kind: "aborted" }
  | { kind: "timeout" }
  | { kind: "network"; detail: string };

const TIMEOUT_REASON = "order-page-timeout";
let inFlight: AbortController | null = null;

/** Starts a request, cancelling the one before it: the last thing asked for wins. */
function beginRequest(): AbortController {
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;
  return controller;
}

async function getJson(path: string, controller: AbortController): Promise<HttpResult> {
  const timer = window.setTimeout(() => controller.abort(TIMEOUT_REASON), REQUEST_TIMEOUT_MS);
  try {
    const response = await fetch(path, {
      headers: { Accept: "application/json" },
      cache: "no-store",
      signal: controller.signal,
    });
    const text = await response.text();
    let body: Json | undefined;
    try {
      body = JSON.parse(text) as Json;
    } catch {
      body = undefined;
    }
    return { kind: "response", status: response.status, body, text };
  } catch (error) {
    if (controller.signal.aborted) {
      return controller.signal.reason === TIMEOUT_REASON ? { kind: "timeout" } : { kind: "aborted" };
    }
    return { kind: "network", detail: error instanceof Error ? error.message : String(error) };
  } finally {
    window.clearTimeout(timer);
  }
}

function errorMessage(body: Json | undefined): string {
  return isObject(body) ? stringField(body, "error") : "";
}

/**
 * `GET /random-order` answers 404 for two reasons: the store is empty (the route
 * says so in its body, this exact error text), or the route is not served on this
 * port (with ADMIN_ADDR set the public port answers the generic "not found"). Only
 * the first keeps "Get random" on the page.
 */
const EMPTY_STORE_ERROR = "no orders stored yet";

function isEmptyStoreAnswer(body: Json | undefined): boolean {
  return errorMessage(body) === EMPTY_STORE_ERROR;
}

// ---------------------------------------------------------------------------
// The page.

const form = byId("search-form", HTMLFormElement);
const input = byId("order-uid", HTMLInputElement);
const randomButton = byId("random-button", HTMLButtonElement);
const statusLine = byId("status", HTMLParagraphElement);
const result = byId("result", HTMLElement);

type HistoryMode = "push" | "replace" | "none";

function setStatus(text: string, tone: "info" | "loading" | "ok" | "warn" | "error" = "info"): void {
  statusLine.textContent = text;
  statusLine.className = `status status-${tone}`;
}

function setBusy(busy: boolean): void {
  result.classList.toggle("is-loading", busy);
  if (busy) result.setAttribute("aria-busy", "true");
  else result.removeAttribute("aria-busy");
}

function show(...nodes: Node[]): void {
  setBusy(false);
  result.replaceChildren(...nodes);
}

function urlFor(uid: string | null): string {
  return uid === null ? location.pathname : `${location.pathname}?id=${encodeURIComponent(uid)}`;
}

function idInUrl(): string | null {
  const id = new URLSearchParams(location.search).get("id");
  return id === null || id.trim() === "" ? null : id.trim();
}

function updateHistory(uid: string, mode: HistoryMode): void {
  if (mode === "none") return;
  const state = { id: uid };
  if (mode === "push" && idInUrl() !== uid) history.pushState(state, "", urlFor(uid));
  else history.replaceState(state, "", urlFor(uid));
}

function retryButton(action: () => void): HTMLButtonElement {
  const button = h("button", { className: "button", attrs: { type: "button" } }, "Try again");
  button.addEventListener("click", action);
  return button;
}

function notice(
  tone: "intro" | "warn" | "error",
  title: string,
  testId: string,
  ...body: Child[]
): HTMLElement {
  return h(
    "div",
    { className: `notice notice-${tone}`, attrs: { "data-view": testId } },
    h("h2", { className: "notice-title" }, title),
    ...body,
  );
}

function showIntro(): void {
  document.title = "Orders · order-service";
  show(
    notice(
      "intro",
      "Look up an order",
      "intro",
      randomAvailable()
        ? h(
            "p",
            {},
            "Type an order UID and press ",
            h("kbd", {}, "Enter"),
            ", or press ",
            h("strong", {}, "Get random"),
            " to open any stored order.",
          )
        : h("p", {}, "Type an order UID and press ", h("kbd", {}, "Enter"), "."),
    ),
  );
}

function randomAvailable(): boolean {
  return !randomButton.hidden;
}

function hideRandom(): void {
  if (randomButton.contains(document.activeElement)) input.focus();
  randomButton.hidden = true;
}

/**
 * Asks `/random-order` once at start-up, so that a port without the route never
 * shows the button. The pick itself is thrown away; the request is a hash lookup.
 */
async function probeRandom(): Promise<void> {
  const answer = await getJson("/random-order", new AbortController());
  if (answer.kind !== "response" || answer.status !== 404 || isEmptyStoreAnswer(answer.body)) return;
  hideRandom();
  if (result.querySelector('[data-view="intro"]') !== null) showIntro();
}

async function lookUp(rawUid: string, mode: HistoryMode, origin = ""): Promise<void> {
  const uid = rawUid.trim();
  input.value = uid;
  input.removeAttribute("aria-invalid");
  if (uid === "") {
    inFlight?.abort();
    input.setAttribute("aria-invalid", "true");
    input.focus();
    setStatus("Type an order UID first.", "warn");
    return;
  }
  updateHistory(uid, mode);
  document.title = `Order ${uid} · order-service`;

  if (uid.length > MAX_SENT_UID_CHARS) {
    inFlight?.abort();
    showMalformed(uid, `the id is ${uid.length} characters long`);
    return;
  }

  const controller = beginRequest();
  setBusy(true);
  setStatus(`Loading order ${uid}…`, "loading");
  const answer = await getJson(`/orders/${encodeURIComponent(uid)}`, controller);
  if (answer.kind === "aborted") return; // a newer lookup owns the page now

  const again = (): void => void lookUp(uid, "none", origin);
  if (!answered(answer, again)) return;
  const { status, body, text } = answer;
  if (status === 200 && isObject(body)) {
    show(renderOrder(body, text));
    setStatus(`Showing order ${uid}${origin}.`, "ok");
  } else if (status === 404) {
    showNotFound(uid);
  } else if (status === 400) {
    showMalformed(uid, errorMessage(body));
  } else {
    showServerError(status, errorMessage(body) || text.slice(0, 200), again);
  }
}

async function pickRandom(): Promise<void> {
  const controller = beginRequest();
  input.removeAttribute("aria-invalid");
  setBusy(true);
  setStatus("Picking a random order…", "loading");
  randomButton.disabled = true;
  let answer: HttpResult;
  try {
    answer = await getJson("/random-order", controller);
  } finally {
    randomButton.disabled = false;
  }
  if (answer.kind === "aborted") return;
  if (!answered(answer, () => void pickRandom())) return;
  const { status, body, text } = answer;
  const uid = isObject(body) ? stringField(body, "order_uid") : "";
  if (status === 200 && uid !== "") {
    input.value = uid;
    await lookUp(uid, "push", " (random pick)");
  } else if (status === 404 && !isEmptyStoreAnswer(body)) {
    // The route is not served on this port (an admin port is set): a 404 that is
    // not the "no orders stored yet" answer. Hide the button rather than offer it.
    hideRandom();
    document.title = "Orders · order-service";
    showIntro();
    setStatus("Get random is not available on this port.", "warn");
  } else if (status === 404) {
    document.title = "Orders · order-service";
    show(
      notice(
        "warn",
        "No orders stored yet",
        "empty",
        h("p", {}, "The service has not stored any order so far, so there is nothing to pick from."),
        h("p", {}, "Publish a few orders to the NATS subject (for example with the ", h("code", {}, "pusher"), " tool), then try again."),
        h("p", { className: "notice-actions" }, retryButton(() => void pickRandom())),
      ),
    );
    setStatus("No orders stored yet.", "warn");
  } else {
    showServerError(status, errorMessage(body) || text.slice(0, 200), () => void pickRandom());
  }
}

function showNotFound(uid: string): void {
  show(
    notice(
      "warn",
      "Order not found",
      "not-found",
      h("p", {}, "There is no stored order with the UID ", h("code", { className: "uid" }, uid), "."),
      randomAvailable()
        ? h(
            "p",
            {},
            "Check it for typos (UIDs are case-sensitive), or press ",
            h("strong", {}, "Get random"),
            " to open an order that exists. An order published a moment ago can take a second to appear.",
          )
        : h(
            "p",
            {},
            "Check it for typos (UIDs are case-sensitive). An order published a moment ago can take a second to appear.",
          ),
    ),
  );
  setStatus(`Order ${uid} not found.`, "warn");
}

function showMalformed(uid: string, serverSaid: string): void {
  input.setAttribute("aria-invalid", "true");
  const shown = uid.length > 80 ? `${uid.slice(0, 80)}…` : uid;
  show(
    notice(
      "warn",
      "That is not a valid order UID",
      "malformed",
      h("p", {}, "You asked for ", h("code", { className: "uid" }, shown), "."),
      h(
        "p",
        {},
        "An order UID is 1 to 64 characters long and uses only letters, digits, ",
        h("code", {}, "-"),
        " and ",
        h("code", {}, "_"),
        UID_PATTERN.test(uid) ? "." : ": this one does not.",
      ),
      serverSaid !== "" && h("p", { className: "muted" }, "The service said: ", h("q", {}, serverSaid)),
    ),
  );
  setStatus(`“${shown}” is not a valid order UID.`, "error");
}

/**
 * True when the server answered; for a timeout or a network failure, shows
 * why with a retry button and is false.
 */
function answered(
  answer: Exclude<HttpResult, { kind: "aborted" }>,
  retry: () => void,
): answer is Extract<HttpResult, { kind: "response" }> {
  if (answer.kind === "timeout") {
    showUnreachable(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`, retry);
    return false;
  }
  if (answer.kind === "network") {
    showUnreachable(answer.detail, retry);
    return false;
  }
  return true;
}

function showUnreachable(detail: string, retry: () => void): void {
  show(
    notice(
      "error",
      "Cannot reach the order service",
      "unreachable",
      h("p", {}, "The request did not get an answer. Check that the service is running and that this machine can reach it, then try again."),
      detail !== "" && h("p", { className: "muted" }, `Details: ${detail}`),
      h("p", { className: "notice-actions" }, retryButton(retry)),
    ),
  );
  setStatus("Cannot reach the order service.", "error");
}

function showServerError(status: number, message: string, retry: () => void): void {
  show(
    notice(
      "error",
      `The service answered with an error (HTTP ${status})`,
      "server-error",
      message !== "" && h("p", {}, h("q", {}, message)),
      h("p", {}, "This is not about the UID you typed. Try again in a moment."),
      h("p", { className: "notice-actions" }, retryButton(retry)),
    ),
  );
  setStatus(`The service answered with HTTP ${status}.`, "error");
}

// ---------------------------------------------------------------------------
// Rendering an order.

/** A value cell: empty strings become a quiet dash so the layout never collapses. */
function value(content: Node | string, key: string): HTMLElement {
  const dd = h("dd", { attrs: { "data-field": key } });
  if (content === "") {
    dd.className = "empty";
    append(dd, [h("span", { attrs: { "aria-label": "empty" } }, "—")]);
  } else {
    append(dd, [content]);
  }
  return dd;
}

function facts(rows: Array<[label: string, key: string, content: Node | string]>, className = "facts"): HTMLElement {
  const list = h("dl", { className });
  for (const [label, key, content] of rows) {
    list.appendChild(h("div", { className: "fact" }, h("dt", {}, label), value(content, key)));
  }
  return list;
}

function card(title: string, id: string, ...children: Child[]): HTMLElement {
  return h(
    "section",
    { className: "card", attrs: { "aria-labelledby": id } },
    h("h3", { className: "card-title", attrs: { id } }, title),
    ...children,
  );
}

function renderOrder(order: JsonObject, text: string): HTMLElement {
  const uid = stringField(order, "order_uid");
  const delivery = objectField(order, "delivery");
  const payment = objectField(order, "payment");
  const currency = stringField(payment, "currency");
  const itemsValue = field(order, "items");
  const items = Array.isArray(itemsValue) ? itemsValue : [];

  const copyLink = h("button", { className: "button button-small", attrs: { type: "button" } }, "Copy link");
  copyLink.addEventListener("click", () => void copyText(location.href, "Link copied."));

  const head = h(
    "header",
    { className: "card order-head" },
    h(
      "div",
      { className: "order-title-row" },
      h(
        "div",
        { className: "order-title" },
        h("p", { className: "eyebrow" }, "Order"),
        h("h2", { className: "order-uid", attrs: { id: "order-title", "data-field": "order_uid" } }, uid),
      ),
      h(
        "div",
        { className: "order-total" },
        h("span", { className: "eyebrow" }, "Total"),
        h("span", { className: "amount-big", attrs: { "data-field": "payment.amount.headline" } }, formatMoney(field(payment, "amount"), currency)),
      ),
    ),
    facts([
      ["Track number", "track_number", stringField(order, "track_number")],
      ["Created", "date_created", timeFromIso(field(order, "date_created"))],
      ["Customer", "customer_id", stringField(order, "customer_id")],
      ["Locale", "locale", stringField(order, "locale")],
      ["Delivery service", "delivery_service", stringField(order, "delivery_service")],
      ["Entry", "entry", stringField(order, "entry")],
      ["Shard key", "shardkey", stringField(order, "shardkey")],
      ["SM id", "sm_id", formatNumber(field(order, "sm_id"))],
      ["OOF shard", "oof_shard", stringField(order, "oof_shard")],
      ["Internal signature", "internal_signature", stringField(order, "internal_signature")],
    ]),
    h("div", { className: "order-actions" }, copyLink),
  );

  const address = [
    stringField(delivery, "address"),
    stringField(delivery, "city"),
    stringField(delivery, "region"),
    stringField(delivery, "zip"),
  ].filter((part) => part !== "");

  const deliveryCard = card(
    "Delivery",
    "delivery-title",
    facts(
      [
        ["Name", "delivery.name", stringField(delivery, "name")],
        ["Phone", "delivery.phone", stringField(delivery, "phone")],
        ["Email", "delivery.email", stringField(delivery, "email")],
        ["Address", "delivery.address", stringField(delivery, "address")],
        ["City", "delivery.city", stringField(delivery, "city")],
        ["Region", "delivery.region", stringField(delivery, "region")],
        ["ZIP", "delivery.zip", stringField(delivery, "zip")],
      ],
      "facts facts-stacked",
    ),
    address.length > 0 && h("p", { className: "address-line muted" }, address.join(", ")),
  );

  const sums = h(
    "table",
    { className: "sums" },
    h("caption", { className: "visually-hidden" }, "Payment amounts"),
    h(
      "tbody",
      {},
      sumRow("Goods", "payment.goods_total", formatMoney(field(payment, "goods_total"), currency)),
      sumRow("Delivery", "payment.delivery_cost", formatMoney(field(payment, "delivery_cost"), currency)),
      sumRow("Custom fee", "payment.custom_fee", formatMoney(field(payment, "custom_fee"), currency)),
    ),
    h(
      "tfoot",
      {},
      sumRow("Amount paid", "payment.amount", formatMoney(field(payment, "amount"), currency)),
    ),
  );

  const paymentCard = card(
    "Payment",
    "payment-title",
    facts(
      [
        ["Paid at", "payment.payment_dt", timeFromUnixSeconds(field(payment, "payment_dt"))],
        ["Currency", "payment.currency", currency],
        ["Provider", "payment.provider", stringField(payment, "provider")],
        ["Bank", "payment.bank", stringField(payment, "bank")],
        ["Transaction", "payment.transaction", stringField(payment, "transaction")],
        ["Request id", "payment.request_id", stringField(payment, "request_id")],
      ],
      "facts facts-stacked",
    ),
    sums,
  );

  const article = h(
    "article",
    { className: "order", attrs: { "aria-labelledby": "order-title", "data-view": "order" } },
    head,
    h("div", { className: "order-grid" }, deliveryCard, paymentCard),
    card(`Items (${items.length})`, "items-title", renderItems(items, currency)),
  );
  const extras = otherFields(order, delivery, payment, items);
  if (extras.length > 0) {
    article.appendChild(
      card(
        "Other fields",
        "other-title",
        h("p", { className: "muted" }, "Fields this page does not lay out itself, as sent:"),
        facts(extras.map(([path, json]) => [path, path, json]), "facts facts-stacked facts-mono"),
      ),
    );
  }
  article.appendChild(rawJson(text));
  return article;
}

function sumRow(label: string, key: string, amount: string): HTMLTableRowElement {
  return h(
    "tr",
    {},
    h("th", { attrs: { scope: "row" } }, label),
    h("td", { className: "num", attrs: { "data-field": key } }, amount),
  );
}

const ITEM_COLUMNS: Array<[label: string, className: string]> = [
  ["Item", ""],
  ["Brand", ""],
  ["Size", ""],
  ["Price", "num"],
  ["Sale", "num"],
  ["Total", "num"],
  ["Status", "num"],
];

function renderItems(items: Json[], currency: string): HTMLElement {
  const headRow = h("tr", {});
  for (const [label, className] of ITEM_COLUMNS) {
    headRow.appendChild(h("th", { className, attrs: { scope: "col" } }, label));
  }
  const body = h("tbody", {});
  items.forEach((itemValue, index) => {
    const item = isObject(itemValue) ? itemValue : {};
    const ids = [
      ["Article", formatPlain(field(item, "nm_id"))],
      ["chrt", formatPlain(field(item, "chrt_id"))],
      ["RID", stringField(item, "rid")],
    ].filter(([, text]) => text !== "").map(([label, text]) => `${label} ${text}`);
    const name = stringField(item, "name");
    const sale = field(item, "sale");
    const cells: Array<[Node | string, string]> = [
      [
        h(
          "div",
          { className: "item-name" },
          h("span", { attrs: { "data-field": `items.${index}.name` } }, name === "" ? "(no name)" : name),
          ids.length > 0 && h("span", { className: "item-ids" }, ids.join(" · ")),
        ),
        "",
      ],
      [stringField(item, "brand"), ""],
      [stringField(item, "size"), ""],
      [formatMoney(field(item, "price"), currency), "num"],
      [
        typeof sale === "number" && sale > 0
          ? h("span", { className: "badge badge-sale" }, `−${formatNumber(sale)}%`)
          : typeof sale === "number" ? "—" : asText(sale),
        "num",
      ],
      [h("strong", {}, formatMoney(field(item, "total_price"), currency)), "num"],
      [h("span", { className: "badge" }, formatPlain(field(item, "status"))), "num"],
    ];
    const row = h("tr", {});
    cells.forEach(([content, className], column) => {
      const label = ITEM_COLUMNS[column]?.[0] ?? "";
      row.appendChild(h("td", { className, attrs: { "data-label": label } }, content));
    });
    body.appendChild(row);
  });
  if (items.length === 0) {
    body.appendChild(h("tr", {}, h("td", { attrs: { colspan: String(ITEM_COLUMNS.length) } }, "No items.")));
  }
  return h(
    "div",
    { className: "table-wrap" },
    h("table", { className: "items" }, h("thead", {}, headRow), body),
  );
}

/** Numbers without grouping (ids, status codes), anything else as text. */
function formatPlain(value: Json | undefined): string {
  return typeof value === "number" ? String(value) : asText(value);
}

function otherFields(
  order: JsonObject,
  delivery: JsonObject,
  payment: JsonObject,
  items: Json[],
): Array<[string, string]> {
  const extras: Array<[string, string]> = [];
  const collect = (object: JsonObject, known: Set<string>, prefix: string): void => {
    for (const [key, json] of Object.entries(object)) {
      if (!known.has(key)) extras.push([`${prefix}${key}`, clip(asText(json))]);
    }
  };
  collect(order, KNOWN_ORDER_FIELDS, "");
  collect(delivery, KNOWN_DELIVERY_FIELDS, "delivery.");
  collect(payment, KNOWN_PAYMENT_FIELDS, "payment.");
  items.forEach((item, index) => {
    if (isObject(item)) collect(item, KNOWN_ITEM_FIELDS, `items[${index}].`);
  });
  return extras;
}

function clip(text: string): string {
  return text.length > 300 ? `${text.slice(0, 300)}… (see Raw JSON)` : text;
}

function rawJson(text: string): HTMLElement {
  const pretty = prettyJson(text);
  const copy = h("button", { className: "button button-small", attrs: { type: "button" } }, "Copy JSON");
  copy.addEventListener("click", () => void copyText(pretty, "JSON copied."));
  return h(
    "details",
    { className: "card raw", attrs: { "data-view": "raw-json" } },
    h("summary", {}, "Raw JSON", h("span", { className: "muted" }, ` · ${numberFormat.format(new TextEncoder().encode(text).length)} bytes, every field as stored`)),
    h("div", { className: "raw-actions" }, copy),
    h("pre", { className: "raw-json", attrs: { tabindex: "0" } }, h("code", {}, pretty)),
  );
}

async function copyText(text: string, done: string): Promise<void> {
  try {
    await navigator.clipboard.writeText(text);
    setStatus(done, "ok");
  } catch {
    setStatus("Copying is not allowed here; select the text and copy it by hand.", "warn");
  }
}

// ---------------------------------------------------------------------------
// The "Rejected" view: dead letters from `GET /rejections` (admin route).
//
// A dead letter is a message the service refused: its payload is whatever anyone
// published, so it is shown as text in a <pre>, never parsed or interpreted.

/** RejectionKind labels (src/order.rs), for the filter; the server is the judge of a kind. */
const REJECTION_KINDS = [
  "not_utf8", "not_json", "not_object", "missing_field", "wrong_type", "negative_amount",
  "sale_out_of_range", "empty_items", "bad_order_uid", "bad_date", "too_large", "too_deep",
  "nul_character", "conflicting_duplicate", "database_rejected", "redelivery_limit",
];
const REJECTIONS_PAGE = 50;

const pageTitle = byId("page-title", HTMLHeadingElement);
const rejectedForm = byId("rejected-form", HTMLFormElement);
const kindSelect = byId("rejected-kind", HTMLSelectElement);
const navOrders = byId("nav-orders", HTMLAnchorElement);
const navRejected = byId("nav-rejected", HTMLAnchorElement);

for (const kind of REJECTION_KINDS) kindSelect.appendChild(h("option", { attrs: { value: kind } }, kind));

type View = "orders" | "rejected";

function viewInUrl(): View {
  return new URLSearchParams(location.search).get("view") === "rejected" ? "rejected" : "orders";
}

function kindInUrl(): string {
  return (new URLSearchParams(location.search).get("kind") ?? "").trim();
}

function rejectedUrl(kind: string): string {
  const query = new URLSearchParams({ view: "rejected" });
  if (kind !== "") query.set("kind", kind);
  return `${location.pathname}?${query.toString()}`;
}

/** Shows the chrome of one view: its title, its form, its navigation state. */
function enterView(view: View): void {
  const rejected = view === "rejected";
  form.hidden = rejected;
  rejectedForm.hidden = !rejected;
  pageTitle.textContent = rejected ? "Rejected messages" : "Order lookup";
  // The order view's title is the search box itself; the rejected view shows its heading.
  pageTitle.classList.toggle("visually-hidden", !rejected);
  result.setAttribute("aria-label", rejected ? "Rejected messages" : "Order");
  for (const [link, active] of [[navOrders, !rejected], [navRejected, rejected]] as const) {
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function showRejected(kind: string, mode: HistoryMode): Promise<void> {
  enterView("rejected");
  if (kind !== "" && !Array.from(kindSelect.options).some((option) => option.value === kind)) {
    // A kind this page does not know yet: keep it selectable, the server decides.
    kindSelect.appendChild(h("option", { attrs: { value: kind } }, kind));
  }
  kindSelect.value = kind;
  if (mode === "push" && (viewInUrl() !== "rejected" || kindInUrl() !== kind)) {
    history.pushState({ view: "rejected", kind }, "", rejectedUrl(kind));
  } else if (mode !== "none") {
    history.replaceState({ view: "rejected", kind }, "", rejectedUrl(kind));
  }
  document.title = kind === "" ? "Rejected · order-service" : `Rejected ${kind} · order-service`;

  const controller = beginRequest();
  setBusy(true);
  setStatus("Loading rejected messages…", "loading");
  const answer = await getJson(rejectionsPath(kind, null), controller);
  if (answer.kind === "aborted") return;
  const again = (): void => void showRejected(kind, "none");
  if (!answered(answer, again)) return;
  const { status, body, text } = answer;
  const page = status === 200 ? rejectionsPage(body) : null;
  if (page !== null) {
    showRejectionList(kind, page);
  } else if (status === 404) {
    show(
      notice(
        "warn",
        "Rejected messages are not served on this port",
        "rejected-unavailable",
        h("p", {}, "The service answered 404 for ", h("code", {}, "/rejections"), ". When it runs with an admin port (", h("code", {}, "ADMIN_ADDR"), "), this list is served there only: open this page on the admin port."),
      ),
    );
    setStatus("Rejected messages are not served on this port.", "warn");
  } else if (status === 400) {
    show(
      notice(
        "warn",
        "The service refused this filter",
        "rejected-bad-filter",
        h("p", {}, h("q", {}, errorMessage(body) || text.slice(0, 200))),
        h("p", {}, "Pick another kind, or all kinds."),
      ),
    );
    setStatus("The service refused this filter.", "error");
  } else {
    showServerError(status, errorMessage(body) || text.slice(0, 200), again);
  }
}

function rejectionsPath(kind: string, cursor: string | null): string {
  const query = new URLSearchParams({ limit: String(REJECTIONS_PAGE) });
  if (cursor !== null) query.set("cursor", cursor);
  if (kind !== "") query.set("kind", kind);
  return `/rejections?${query.toString()}`;
}

interface RejectionsPage {
  rejections: JsonObject[];
  nextCursor: string | null;
}

/** The C3 body, or null when it is not one (then the answer is shown as an error). */
function rejectionsPage(body: Json | undefined): RejectionsPage | null {
  if (!isObject(body)) return null;
  const list = field(body, "rejections");
  if (!Array.isArray(list)) return null;
  const cursor = field(body, "next_cursor");
  return {
    rejections: list.filter(isObject),
    nextCursor: typeof cursor === "string" && cursor !== "" ? cursor : null,
  };
}

function showRejectionList(kind: string, page: RejectionsPage): void {
  const which = kind === "" ? "" : ` of kind ${kind}`;
  if (page.rejections.length === 0) {
    show(
      notice(
        "intro",
        kind === "" ? "No rejected messages" : `No rejected messages of kind ${kind}`,
        "rejected-empty",
        h("p", {}, "Every message the service received so far was stored, or refused messages have been cleaned up."),
      ),
    );
    setStatus(`No rejected messages${which}.`, "ok");
    return;
  }
  const list = h("ol", { className: "rejections", attrs: { "aria-label": "Rejected messages, newest first" } });
  appendRejections(list, page.rejections);
  const wrap = h("div", { attrs: { "data-view": "rejected" } }, list);
  let shown = page.rejections.length;
  const status = (more: boolean): void =>
    setStatus(`Showing ${numberFormat.format(shown)} rejected message${shown === 1 ? "" : "s"}${which}, newest first${more ? "" : " (all of them)"}.`, "ok");

  let cursor = page.nextCursor;
  if (cursor !== null) {
    const more = h("button", { className: "button", attrs: { type: "button", "data-action": "older" } }, "Show older");
    const actions = h("p", { className: "list-actions" }, more);
    more.addEventListener("click", () => {
      if (cursor === null) return;
      const controller = beginRequest();
      more.disabled = true;
      setStatus("Loading older rejected messages…", "loading");
      void getJson(rejectionsPath(kind, cursor), controller).then((answer) => {
        more.disabled = false;
        if (answer.kind === "aborted") return;
        const next = answer.kind === "response" && answer.status === 200 ? rejectionsPage(answer.body) : null;
        if (next === null) {
          setStatus("Could not load older rejected messages; press Show older to try again.", "error");
          return;
        }
        const first = list.children.length;
        appendRejections(list, next.rejections);
        shown += next.rejections.length;
        cursor = next.nextCursor;
        if (cursor === null) actions.remove();
        status(cursor !== null);
        // Keyboard users land on the first new message rather than on a vanished button.
        const firstNew = list.children[first];
        if (firstNew instanceof HTMLElement) firstNew.focus();
        else more.focus();
      });
    });
    wrap.appendChild(actions);
  }
  show(wrap);
  status(cursor !== null);
}

function appendRejections(list: HTMLElement, rejections: JsonObject[]): void {
  for (const rejection of rejections) list.appendChild(renderRejection(rejection));
}

function renderRejection(rejection: JsonObject): HTMLElement {
  const id = formatPlain(field(rejection, "id"));
  const kind = stringField(rejection, "kind");
  const reason = stringField(rejection, "reason");
  const payload = stringField(rejection, "payload");
  const length = field(rejection, "payload_length");
  const truncated = field(rejection, "payload_truncated") === true;
  const sequence = field(rejection, "stream_sequence");
  const titleId = `rejection-${id.replace(/[^A-Za-z0-9_-]/g, "_")}`;

  const size = typeof length === "number" ? `${numberFormat.format(length)} byte${length === 1 ? "" : "s"}` : "";
  const payloadNote = truncated
    ? `Payload · first ${numberFormat.format(new TextEncoder().encode(payload).length)} bytes of ${size}`
    : `Payload · ${size === "" ? "size unknown" : size}`;

  return h(
    "li",
    { className: "card rejection", attrs: { "aria-labelledby": titleId, tabindex: "-1", "data-rejection-id": id } },
    h(
      "div",
      { className: "rejection-meta" },
      h("span", { className: "badge badge-kind", attrs: { "data-field": "kind" } }, kind === "" ? "unknown" : kind),
      h("span", { attrs: { "data-field": "received_at" } }, timeFromIso(field(rejection, "received_at"))),
      h(
        "span",
        { className: "muted rejection-ids" },
        `#${id}`,
        typeof sequence === "number" ? ` · stream sequence ${formatPlain(sequence)}` : " · not from the stream",
      ),
    ),
    h("h2", { className: "rejection-reason", attrs: { id: titleId, "data-field": "reason" } }, reason === "" ? "(no reason given)" : reason),
    h("p", { className: "payload-note muted" }, payloadNote),
    // A scrollable region must be reachable by keyboard, hence the tabindex.
    h(
      "pre",
      { className: "payload", attrs: { tabindex: "0", "aria-label": `Payload of rejected message ${id}` } },
      h("code", { attrs: { "data-field": "payload" } }, payload),
    ),
  );
}

// ---------------------------------------------------------------------------
// Wiring.

form.addEventListener("submit", (event) => {
  event.preventDefault();
  void lookUp(input.value, "push");
});

rejectedForm.addEventListener("submit", (event) => {
  event.preventDefault();
  void showRejected(kindSelect.value, "push");
});

kindSelect.addEventListener("change", () => void showRejected(kindSelect.value, "push"));

navRejected.addEventListener("click", (event) => {
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  void showRejected("", "push");
});

randomButton.addEventListener("click", () => void pickRandom());

input.addEventListener("input", () => input.removeAttribute("aria-invalid"));

function showOrdersFromUrl(mode: HistoryMode): void {
  enterView("orders");
  const id = idInUrl();
  if (id === null) {
    inFlight?.abort();
    input.value = "";
    showIntro();
    setStatus("");
  } else {
    void lookUp(id, mode);
  }
}

window.addEventListener("popstate", () => {
  if (viewInUrl() === "rejected") void showRejected(kindInUrl(), "none");
  else showOrdersFromUrl("none");
});

if (viewInUrl() === "rejected") {
  void showRejected(kindInUrl(), "replace");
} else if (idInUrl() !== null) {
  showOrdersFromUrl("replace");
} else {
  enterView("orders"); // the intro in index.html stays as it is
}
void probeRandom();
