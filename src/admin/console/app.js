// The taphook console: plain JavaScript, no dependencies, no build step.
//
// Safety rules this file keeps:
// - every value from the API reaches the page as text (text nodes,
//   `textContent`, attributes set with `setAttribute`), never as markup:
//   nothing here parses HTML (no inner or outer HTML setters, no writes
//   to the document, no eval);
// - every link is built here from a fixed path and `encodeURIComponent`ed
//   values, never taken from data;
// - the admin token lives in this tab's session storage only, and goes
//   out only in the `Authorization` header of requests to this origin.

const TOKEN_KEY = "taphook.admin_token";
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const live = document.getElementById("live");
const signOutButton = document.getElementById("sign-out");
const who = document.getElementById("who");
const searchForm = document.getElementById("search-form");
const searchInput = document.getElementById("search");

/** The signed-in token: `{name, role, can: {read, operate, admin}}`. */
let me = null;
const can = (role) => Boolean(me && me.can && me.can[role]);
/** With the JetStream store only dead letters are sent again. */
const onlyDeadRetries = () => Boolean(me && me.store === "jetstream");
/** Whether delivery `d` can be sent again from here. */
const retryable = (d) => can("operate") && (d.state === "dead" || (!onlyDeadRetries() && (shownState(d) === "failed" || d.state === "delivered")));

// ---------------------------------------------------------------- DOM

/** An element with properties and children (strings become text). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else if (name === "checked") el.checked = Boolean(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** A link inside the console: `parts` are encoded, `query` is a map. */
function link(text, parts, query) {
  const path = parts.map((p, i) => (i === 0 ? p : encodeURIComponent(p))).join("/");
  const qs = query ? new URLSearchParams(query).toString() : "";
  return h("a", { href: `#/${path}${qs ? `?${qs}` : ""}` }, text);
}

function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** The local zone's offset at `d`, as `UTC+01:00`. */
function zone(d) {
  const offset = -d.getTimezoneOffset();
  const sign = offset < 0 ? "-" : "+";
  const abs = Math.abs(offset);
  return `UTC${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

/** How long ago (or ahead) `ms` is: `2 min ago`, `in 5 s`. */
function relative(ms, now = Date.now()) {
  const diff = Math.round((now - ms) / 1000);
  const abs = Math.abs(diff);
  const [n, unit] =
    abs < 60 ? [abs, "s"] : abs < 3600 ? [Math.floor(abs / 60), "min"] : abs < 86400 ? [Math.floor(abs / 3600), "h"] : [Math.floor(abs / 86400), "d"];
  if (abs < 1) return "now";
  return diff >= 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`;
}

/** A time in ms as local `YYYY-MM-DD HH:MM:SS.mmm UTC+hh:mm (2 min ago)`. */
function time(ms) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return String(ms);
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${date} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)} ${zone(d)} (${relative(ms)})`;
}

function json(value) {
  return h("pre", {}, JSON.stringify(value, null, 2));
}

function errorText(e) {
  return e && e.message ? e.message : String(e);
}

function table(headings, rows, empty) {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", { class: t.startsWith("#") ? "num" : "" }, t.replace(/^#/, ""))))),
    h("tbody", {}, rows),
  );
}

/**
 * A table of the rows in `data[field]`, with a More button that appends
 * the next pages (`query(cursor)` is the API path of a page).
 */
function pagedTable(headings, field, rowOf, query, data, empty) {
  const list = table(headings, data[field].map(rowOf), empty);
  if (!data.has_next_page) return [list];
  let cursor = data.next_cursor;
  const more = h(
    "button",
    {
      class: "secondary more",
      type: "button",
      onclick: async () => {
        const next = await api(query(cursor));
        list.querySelector("tbody").append(...next[field].map(rowOf));
        cursor = next.next_cursor;
        if (!next.has_next_page) more.remove();
      },
    },
    "More",
  );
  return [list, more];
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error ? body.error : {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.problems = error.problems || [];
    this.fields = error.fields || {};
  }
}

/** Calls the admin API (`/v1` beside `/console/`) with the token. */
async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`../v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    const e = new ApiError(401, data);
    showSignIn(e.message);
    throw e;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------- views and live updates

let generation = 0;

/** What a view may do while it is the one shown. */
function viewContext() {
  const mine = ++generation;
  live.hidden = true;
  return {
    alive: () => mine === generation,
    /** Calls `load` every `ms` while the view is shown and the tab visible. */
    every(ms, load) {
      live.hidden = false;
      const tick = async () => {
        if (mine !== generation) return;
        if (!document.hidden) {
          try {
            await load();
          } catch (e) {
            if (e.status === 401) return;
          }
        }
        if (mine === generation) setTimeout(tick, ms);
      };
      setTimeout(tick, ms);
    },
  };
}

/**
 * Renders `region` from `fetchData` and keeps it fresh; unchanged data is
 * not redrawn. Resolves, once drawn, with the function that loads it again.
 */
async function liveRegion(ctx, region, fetchData, draw, ms) {
  let last = null;
  const load = async () => {
    const data = await fetchData();
    const key = JSON.stringify(data);
    if (!ctx.alive() || key === last) return;
    last = key;
    region.replaceChildren(...[draw(data)].flat());
  };
  if (ms) ctx.every(ms, load);
  await load().catch((e) => {
    if (e.status !== 401 && ctx.alive()) region.replaceChildren(h("p", { class: "error" }, errorText(e)));
  });
  return load;
}

function page(title, ...children) {
  main.replaceChildren(h("h1", {}, title), ...children.filter((c) => c !== null && c !== undefined && c !== false));
}

// ---------------------------------------------------------------- sign in

function showSignIn(message) {
  generation++;
  me = null;
  who.hidden = true;
  searchForm.hidden = true;
  nav.hidden = true;
  live.hidden = true;
  signOutButton.hidden = true;
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password", required: true });
  const status = h("p", { class: "error", role: "alert", id: "signin-error" }, message || "");
  const form = h(
    "form",
    {
      class: "card signin stacked",
      id: "signin",
      onsubmit: async (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value);
        me = null;
        try {
          await api("/whoami");
          route();
        } catch (e) {
          if (e.status !== 401) status.textContent = errorText(e);
        }
      },
    },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use an admin token (admin_token or admin_tokens in taphook's config). It stays in this tab's session storage and is sent only to this taphook."),
    h("label", {}, "Admin token", input),
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  main.replaceChildren(form);
  input.focus();
}

signOutButton.addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn("");
});

// ---------------------------------------------------------------- overview

function chart(minutes) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 720;
  const height = 160;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Events and delivery attempts per minute, last hour");
  const peak = Math.max(1, ...minutes.map((m) => Math.max(m.events, m.delivered + m.failed)));
  const slot = width / minutes.length;
  const scale = (n) => ((height - 4) * n) / peak;
  const rect = (cls, x, y, w, hgt) => {
    const r = document.createElementNS(ns, "rect");
    for (const [k, v] of Object.entries({ class: cls, x, y, width: w, height: hgt })) r.setAttribute(k, String(v));
    svg.append(r);
  };
  minutes.forEach((m, i) => {
    const x = i * slot;
    rect("events", x + 1, height - scale(m.events), slot / 2 - 1, scale(m.events));
    rect("delivered", x + slot / 2, height - scale(m.delivered), slot / 2 - 1, scale(m.delivered));
    rect("failed", x + slot / 2, height - scale(m.delivered) - scale(m.failed), slot / 2 - 1, scale(m.failed));
  });
  return h(
    "div",
    {},
    h("div", { class: "axis" }, h("span", {}, `${peak} per minute`)),
    svg,
    h("div", { class: "axis" }, h("span", {}, "60 min ago"), h("span", {}, "now")),
  );
}

function funnelTable(stages, funnel) {
  const rows = funnel.map((row) => {
    const first = Math.max(1, ...stages.map((s) => row.stages[s] || 0));
    const template = row.template_key === null ? "(none)" : row.template_key;
    return h(
      "tr",
      {},
      h("td", {}, row.template_key === null ? template : link(template, ["sessions"], { q: row.template_key })),
      stages.map((s) => {
        const n = row.stages[s] || 0;
        const bar = h("div", { class: "bar", title: `${n} sessions` });
        bar.style.width = `${Math.round((100 * n) / first)}%`;
        return h("td", { class: "num" }, String(n), bar);
      }),
      h("td", { class: "num" }, String(row.stalled)),
    );
  });
  return table(["template_key", ...stages.map((s) => `#${s.replace("_", " ")}`), "#stalled"], rows, "No sessions yet.");
}

async function overview(ctx) {
  const region = h("div", { id: "overview" });
  page("Overview", region);
  await liveRegion(
    ctx,
    region,
    () => api("/overview"),
    (data) => {
      const sum = (k) => data.minutes.reduce((n, m) => n + m[k], 0);
      return [
        h(
          "div",
          { class: "grid" },
          h("div", { class: "card" }, h("div", { class: "muted" }, "Events, last hour"), h("strong", { id: "events-hour" }, String(sum("events")))),
          h("div", { class: "card" }, h("div", { class: "muted" }, "Delivered attempts"), h("strong", {}, String(sum("delivered")))),
          h("div", { class: "card" }, h("div", { class: "muted" }, "Failed attempts"), h("strong", {}, String(sum("failed")))),
        ),
        h("h2", {}, "Per minute"),
        h("div", { class: "legend" }, h("span", { class: "events" }, "events"), h("span", { class: "delivered" }, "delivered"), h("span", { class: "failed" }, "failed")),
        chart(data.minutes),
        h("p", { class: "muted" }, "Counted by this taphook process since it started."),
        h("h2", {}, "Funnel per template"),
        funnelTable(data.stages, data.funnel),
      ];
    },
    10000,
  );
}

// ---------------------------------------------------------------- sessions

function sessionRow(s) {
  return h(
    "tr",
    {},
    h("td", {}, link(s.session_key, ["sessions", s.session_key])),
    h("td", {}, s.template_key === null ? h("span", { class: "muted" }, "(none)") : s.template_key),
    h("td", {}, s.stage ? badge(s.stage, "stage") : "", " ", s.stalled ? badge("stalled") : ""),
    h("td", {}, s.last_event_type),
    h("td", {}, time(s.last_event_at)),
  );
}

async function sessions(ctx, params) {
  const q = params.get("q") || "";
  const input = h("input", { type: "search", name: "q", id: "session-search", value: q, placeholder: "session key or template_key" });
  const form = h(
    "form",
    {
      class: "inline",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = `#/sessions${input.value ? `?q=${enc(input.value)}` : ""}`;
      },
    },
    h("label", {}, "Search", input),
    h("button", { type: "submit" }, "Search"),
  );
  const region = h("div", { id: "sessions" });
  page("Sessions", form, region);
  const query = (cursor) => `/sessions?${new URLSearchParams({ limit: "50", ...(q ? { q } : {}), ...(cursor ? { cursor } : {}) })}`;
  const draw = (data) =>
    pagedTable(["session", "template_key", "stage", "last event", "at"], "sessions", sessionRow, query, data, q ? "No session matches." : "No sessions yet.");
  await liveRegion(ctx, region, () => api(query()), draw, 5000);
}

async function allEvents(key) {
  const events = [];
  let cursor = null;
  for (let i = 0; i < 10; i++) {
    const qs = new URLSearchParams({ limit: "1000", ...(cursor ? { cursor } : {}) });
    let pageData;
    try {
      pageData = await api(`/session/events?key=${enc(key)}&${qs}`);
    } catch (e) {
      if (e.status === 404) return events;
      throw e;
    }
    events.push(...pageData.events);
    if (!pageData.has_next_page) break;
    cursor = pageData.next_cursor;
  }
  return events;
}

/** Whether a delivery's last attempt failed. */
const lastFailed = (d) => Boolean(d.last_status) && !/^2\d\d$/.test(d.last_status);

/** The state a delivery is shown in: `failed` for a pending one whose last attempt failed. */
function shownState(d) {
  return d.state === "pending" && lastFailed(d) ? "failed" : d.state;
}

/**
 * A button that sends delivery `id` again, writing what came of it into
 * `status` (`queued`: the notice once it is queued).
 */
function retryButton(id, status, { elementId, className = "retry secondary", queued } = {}) {
  const button = h(
    "button",
    {
      type: "button",
      id: elementId,
      class: className,
      onclick: async () => {
        button.disabled = true;
        status.className = "";
        status.textContent = "Sending again…";
        try {
          await api(`/deliveries/${enc(id)}/retry`, { method: "POST" });
          status.className = "notice";
          status.textContent = queued || `Delivery ${id} queued: it goes out now.`;
        } catch (e) {
          status.className = "error";
          status.textContent = errorText(e);
        } finally {
          button.disabled = false;
        }
      },
    },
    "Retry",
  );
  return button;
}

function deliveryChip(d, status) {
  const state = shownState(d);
  return h(
    "li",
    { "data-webhook": d.webhook, "data-id": String(d.id) },
    link(d.webhook, ["deliveries", String(d.id)]),
    " ",
    badge(state, state),
    d.state === "held" ? " " : "",
    d.test ? badge("test", "stage") : "",
    d.attempts ? ` ${d.attempts} attempt${d.attempts === 1 ? "" : "s"}` : "",
    d.last_status ? ` · ${d.last_status}` : "",
    d.held_reason ? h("span", { class: "muted held-reason" }, ` · ${d.held_reason}`) : "",
    retryable(d) ? [" ", retryButton(d.id, status)] : "",
  );
}

function timeline(events, deliveries, open, status) {
  const byEvent = new Map();
  for (const d of deliveries) {
    if (!byEvent.has(d.event_uuid)) byEvent.set(d.event_uuid, []);
    byEvent.get(d.event_uuid).push(d);
  }
  if (events.length === 0) return h("p", { class: "muted" }, "No events logged for this session (none yet, or past the retention).");
  return h(
    "ol",
    { class: "timeline", id: "timeline" },
    events.map((e) => {
      const sent = byEvent.get(e.uuid) || [];
      const details = h("details", { open: open.has(e.uuid), ontoggle: () => (details.open ? open.add(e.uuid) : open.delete(e.uuid)) }, h("summary", {}, "data"), json(e.data));
      return h(
        "li",
        { "data-event": e.event_type },
        h("div", { class: "head" }, h("span", { class: "type" }, e.event_type), badge(e.trigger_type, "stage"), h("span", { class: "muted" }, time(e.created_at * 1000)), h("code", { class: "muted" }, e.uuid)),
        details,
        sent.length ? h("ul", { class: "deliveries" }, sent.map((d) => deliveryChip(d, status))) : h("p", { class: "muted" }, "Sent to no webhook."),
      );
    }),
  );
}

async function session(ctx, key) {
  const summary = h("div", { class: "card", id: "session-summary" });
  const region = h("div", { id: "session-timeline" });
  const status = h("p", { role: "status", id: "timeline-status" });
  page(`Session ${key}`, summary, h("h2", {}, "Timeline"), status, region);
  const open = new Set();
  await Promise.all([
    liveRegion(
      ctx,
      summary,
      async () => {
        try {
          return (await api(`/session?key=${enc(key)}`)).session;
        } catch (e) {
          if (e.status === 404) return null;
          throw e;
        }
      },
      (s) =>
        s === null
          ? h("p", { class: "muted" }, "No funnel progress for this session.")
          : h(
              "dl",
              { class: "kv" },
              h("dt", {}, "template_key"),
              h("dd", {}, s.template_key === null ? "(none)" : s.template_key),
              h("dt", {}, "stage"),
              h("dd", {}, s.stage ? badge(s.stage, "stage") : "(none)", " ", s.stalled ? badge("stalled") : "", s.finished ? " finished" : ""),
              Object.entries(s.reached).map(([stage, at]) => [h("dt", {}, stage), h("dd", {}, time(at))]),
              h("dt", {}, "last event"),
              h("dd", {}, `${s.last_event_type} at ${time(s.last_event_at)}`),
            ),
      2000,
    ),
    liveRegion(
      ctx,
      region,
      async () => {
        const [events, deliveries] = await Promise.all([allEvents(key), api(`/session/deliveries?key=${enc(key)}`)]);
        return { events, deliveries: deliveries.deliveries };
      },
      (data) => timeline(data.events, data.deliveries, open, status),
      2000,
    ),
  ]);
}

// ---------------------------------------------------------------- deliveries

const STATES = ["pending", "held", "failed", "dead", "delivered"];
/** States a bulk retry can send again. */
const RETRYABLE = ["dead", "failed", "delivered"];

async function webhookKeys() {
  const data = await api("/event-webhooks");
  return data.event_webhooks.map((w) => w.webhook_key);
}

function select(name, options, current, id) {
  return h(
    "select",
    { name, id: id || name },
    options.map(([value, text]) => h("option", { value, selected: value === current }, text)),
  );
}

function deliveryRow(d) {
  return h(
    "tr",
    { "data-id": String(d.id) },
    h("td", { class: "num" }, link(String(d.id), ["deliveries", String(d.id)])),
    h("td", {}, d.webhook),
    h("td", {}, d.session === null ? "" : link(d.session, ["sessions", d.session])),
    h("td", {}, d.event_type),
    h("td", {}, badge(shownState(d), shownState(d)), d.test ? [" ", badge("test", "stage")] : ""),
    h("td", { class: "num" }, String(d.attempts)),
    h("td", {}, d.last_status || ""),
    h("td", {}, time(d.next_attempt_at)),
    h("td", {}, time(d.created_at)),
  );
}

async function deliveries(ctx, params) {
  const state = params.get("state") || "pending";
  const webhook = params.get("webhook") || "";
  const sessionKey = params.get("session") || "";
  const keys = await webhookKeys();
  const stateSelect = select("state", STATES.map((s) => [s, s]), state);
  const webhookSelect = select("webhook", [["", "all webhooks"], ...keys.map((k) => [k, k])], webhook);
  const sessionInput = h("input", { type: "search", name: "session", value: sessionKey, placeholder: "session key" });
  const filters = h(
    "form",
    {
      class: "inline",
      id: "delivery-filters",
      onsubmit: (event) => {
        event.preventDefault();
        const q = new URLSearchParams({ state: stateSelect.value });
        if (webhookSelect.value) q.set("webhook", webhookSelect.value);
        if (sessionInput.value) q.set("session", sessionInput.value);
        location.hash = `#/deliveries?${q}`;
      },
    },
    h("label", {}, "State", stateSelect),
    h("label", {}, "Webhook", webhookSelect),
    h("label", {}, "Session", sessionInput),
    h("button", { type: "submit" }, "Filter"),
  );
  const region = h("div", { id: "deliveries" });
  const bulk = can("operate") && RETRYABLE.includes(state) && (state === "dead" || !onlyDeadRetries()) ? retryThese({ state, webhook, session: sessionKey }) : null;
  page("Deliveries", filters, bulk, region, can("operate") ? replayForm(keys) : null);
  const query = (cursor) => {
    const q = new URLSearchParams({ state, limit: "100" });
    if (webhook) q.set("webhook", webhook);
    if (sessionKey) q.set("session", sessionKey);
    if (cursor) q.set("cursor", cursor);
    return `/deliveries?${q}`;
  };
  const draw = (data) =>
    pagedTable(["#id", "webhook", "session", "event", "state", "#attempts", "last status", "next attempt", "created"], "deliveries", deliveryRow, query, data, `No ${state} deliveries.`);
  await liveRegion(ctx, region, () => api(query()), draw, 5000);
}

/**
 * "Retry these": counts what the current filter matches (a dry run),
 * asks, then sends them again.
 */
function retryThese(filter) {
  const body = { state: filter.state };
  if (filter.webhook) body.webhook = filter.webhook;
  if (filter.session) body.session = filter.session;
  const status = h("p", { role: "status", id: "bulk-status" });
  const confirmBox = h("div", { id: "bulk-confirm", class: "toolbar" });
  const start = h(
    "button",
    {
      type: "button",
      id: "retry-these",
      class: "secondary",
      onclick: async () => {
        status.className = "";
        status.textContent = "Counting…";
        confirmBox.replaceChildren();
        try {
          const { would_requeue: n } = await api("/deliveries/retry", { method: "POST", body: { ...body, dry_run: true } });
          if (n === 0) {
            status.textContent = "Nothing matches this filter.";
            return;
          }
          status.textContent = `${n} ${filter.state} deliver${n === 1 ? "y matches" : "ies match"} this filter.`;
          const yes = h(
            "button",
            {
              type: "button",
              id: "retry-these-confirm",
              onclick: async () => {
                yes.disabled = true;
                try {
                  const done = await api("/deliveries/retry", { method: "POST", body });
                  status.className = "notice";
                  status.textContent = `${done.requeued} deliver${done.requeued === 1 ? "y" : "ies"} sent again.`;
                } catch (e) {
                  status.className = "error";
                  status.textContent = errorText(e);
                }
                confirmBox.replaceChildren();
              },
            },
            `Send ${n} again`,
          );
          const no = h("button", { type: "button", class: "secondary", onclick: () => { confirmBox.replaceChildren(); status.textContent = "Cancelled."; } }, "Cancel");
          confirmBox.replaceChildren(yes, " ", no);
        } catch (e) {
          status.className = "error";
          status.textContent = errorText(e);
        }
      },
    },
    "Retry these",
  );
  return h("div", { class: "card", id: "bulk" }, h("div", { class: "toolbar" }, start), status, confirmBox);
}

function replayForm(keys) {
  const webhook = select("webhook", keys.map((k) => [k, k]), keys[0], "replay-webhook");
  const since = h("input", { name: "since", id: "replay-since", placeholder: "2h, or 2026-12-05T10:00:00Z" });
  const delivered = h("input", { type: "checkbox", name: "include_delivered", id: "replay-delivered" });
  const status = h("p", { role: "status", id: "replay-status" });
  return h(
    "div",
    { class: "card" },
    h("h2", {}, "Replay dead letters"),
    h(
      "form",
      {
        class: "inline",
        id: "replay",
        onsubmit: async (event) => {
          event.preventDefault();
          status.className = "";
          status.textContent = "Sending…";
          const body = { webhook: webhook.value, include_delivered: delivered.checked };
          if (since.value) body.since = since.value;
          try {
            const data = await api("/deliveries/replay", { method: "POST", body });
            status.className = "notice";
            status.textContent = `${data.requeued} deliver${data.requeued === 1 ? "y" : "ies"} sent again.`;
          } catch (e) {
            status.className = "error";
            status.textContent = errorText(e);
          }
        },
      },
      h("label", {}, "Webhook", webhook),
      h("label", {}, "Since (empty: all)", since),
      h("label", {}, h("span", {}, "Delivered too"), delivered),
      h("button", { type: "submit" }, "Replay"),
    ),
    status,
  );
}

function headerList(headers) {
  if (!headers || headers.length === 0) return h("p", { class: "muted" }, "(none)");
  return h("dl", { class: "kv headers" }, headers.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]));
}

/** What an attempt sent and what came back. */
function exchange(a, id) {
  const req = a.request;
  const res = a.response;
  const sent = req
    ? h(
        "div",
        { class: "sent" },
        h("h4", {}, "Sent"),
        h("p", {}, h("code", {}, `${req.method} ${req.url}`)),
        headerList(req.headers),
        h("p", {}, `body: ${req.body_bytes} bytes · `, link("payload", ["deliveries", String(id)], { part: String(req.part) })),
      )
    : h("p", { class: "muted" }, "What was sent was not kept for this attempt.");
  let back = h("p", { class: "muted" }, "No response kept.");
  if (res && res.error) {
    back = h("div", { class: "received" }, h("h4", {}, "No response"), h("p", { class: "error" }, badge(res.error.kind, "failed"), " ", res.error.message), h("p", { class: "muted" }, `after ${res.total_ms} ms`));
  } else if (res) {
    back = h(
      "div",
      { class: "received" },
      h("h4", {}, "Received"),
      h("p", {}, res.status !== undefined ? `HTTP ${res.status}` : "", res.first_byte_ms !== undefined ? ` · first byte ${res.first_byte_ms} ms` : "", ` · total ${res.total_ms} ms`),
      headerList(res.headers),
      res.body ? h("pre", {}, res.body + (res.body_truncated ? "\n… (first 4 KiB)" : "")) : h("p", { class: "muted" }, "(empty body)"),
    );
  }
  return h("details", { class: "exchange" }, h("summary", {}, "request and response"), sent, back);
}

function attemptRows(attempts, id) {
  return attempts.map((a) =>
    h(
      "tr",
      {},
      h("td", { class: "num" }, String(a.n)),
      h("td", {}, time(a.at)),
      h("td", { class: "num" }, String(a.part)),
      h("td", {}, badge(a.outcome, /^2\d\d$/.test(a.outcome) ? "delivered" : "failed")),
      h("td", { class: "num" }, `${a.duration_ms} ms`),
      h("td", {}, exchange(a, id)),
    ),
  );
}

async function delivery(ctx, id, params) {
  const status = h("p", { role: "status", id: "retry-status" });
  const retry = retryButton(id, status, { elementId: "retry", className: "", queued: "Queued: it goes out now, and this page follows it." });
  const region = h("div", { id: "delivery" });
  const toolbar = h("div", { class: "toolbar" });
  page(`Delivery ${id}`, toolbar, status, region);
  const part = params && params.get("part");
  await liveRegion(
    ctx,
    region,
    () => api(`/deliveries/${enc(id)}`),
    (data) => {
      const d = data.delivery;
      toolbar.replaceChildren(...(retryable(d) ? [retry] : []));
      return [
        h(
          "div",
          { class: "card" },
          h(
            "dl",
            { class: "kv" },
            h("dt", {}, "state"),
            h("dd", { id: "delivery-state" }, badge(shownState(d), shownState(d)), d.test ? [" ", badge("test", "stage")] : "", d.held_reason ? h("div", { class: "muted", id: "held-reason" }, d.held_reason) : ""),
            h("dt", {}, "webhook"),
            h("dd", {}, link(d.webhook, ["deliveries"], { state: d.state, webhook: d.webhook })),
            h("dt", {}, "session"),
            h("dd", {}, d.session === null ? "(none)" : link(d.session, ["sessions", d.session])),
            h("dt", {}, "event"),
            h("dd", {}, `${d.event_type} `, h("code", {}, d.event_uuid)),
            h("dt", {}, "attempts"),
            h("dd", { id: "delivery-attempts" }, String(d.attempts), h("span", { class: "muted" }, ` (${d.retries_spent} counted against the retry policy)`)),
            h("dt", {}, "part"),
            h("dd", {}, String(d.part)),
            h("dt", {}, "next attempt"),
            h("dd", { id: "delivery-next" }, d.next_attempt_at === null ? (d.state === "held" ? "(none while the webhook is disabled)" : "(none)") : time(d.next_attempt_at)),
            h("dt", {}, "last status"),
            h("dd", {}, d.last_status || "(none)"),
            h("dt", {}, "created"),
            h("dd", {}, time(d.created_at)),
            h("dt", {}, "updated"),
            h("dd", {}, time(d.updated_at)),
          ),
        ),
        h("h2", {}, "Attempts"),
        table(["#", "at", "#part", "outcome", "#duration", "request and response"], attemptRows(data.attempts, d.id), "No attempts yet."),
        h("h2", {}, "Payload"),
        h("p", { class: "muted" }, "As the webhook's format sends it now, with the session's embed JWT masked."),
        h(
          "div",
          { id: "payload" },
          data.payload === null
            ? h("p", { class: "muted" }, "Not available.")
            : data.payload.map((body, i) => (part !== null && part !== undefined && String(i) !== part ? null : [data.payload.length > 1 ? h("h3", {}, `Part ${i}`) : null, json(body)])),
        ),
      ];
    },
    2000,
  );
}

// ---------------------------------------------------------------- webhooks

function webhookState(w) {
  if (w.disabled) return [badge("disabled"), " ", h("span", { class: "muted" }, w.disabled)];
  if (w.paused) return badge("paused");
  return badge("active");
}

/** The webhook's rate limit and ordering, in words. */
function controls(w) {
  const limit = w.effective_rate_limit;
  return [
    limit ? h("div", {}, `≤ ${limit.per_second}/s, burst ${limit.burst}${w.rate_limit ? "" : " (default)"}`) : h("div", { class: "muted" }, "no rate limit"),
    w.ordering === "session" ? h("div", {}, "in order per session") : null,
  ];
}

function percent(rate) {
  return rate === null ? "–" : `${(rate * 100).toFixed(rate === 1 ? 0 : 1)}%`;
}

async function webhooks(ctx) {
  const region = h("div", { id: "webhooks" });
  const status = h("p", { role: "status", id: "webhook-status" });
  page("Webhooks", can("admin") ? h("div", { class: "toolbar" }, link("New webhook", ["webhooks", "new"])) : null, status, region);
  const fetchAll = async () => {
    const list = (await api("/event-webhooks")).event_webhooks;
    const stats = await Promise.all(list.map((w) => api(`/event-webhooks/${enc(w.webhook_key)}/stats`)));
    return list.map((w, i) => ({ ...w, stats: stats[i] }));
  };
  let reload = async () => {};
  const enable = (key) => async () => {
    try {
      await api(`/event-webhooks/${enc(key)}/enable`, { method: "POST" });
      status.className = "notice";
      status.textContent = `${key} enabled.`;
      await reload();
    } catch (e) {
      status.className = "error";
      status.textContent = errorText(e);
    }
  };
  const draw = (list) =>
    table(
      ["webhook", "format", "events", "filter", "controls", "state", "#pending", "#dead", "#success, 1 h", ""],
      list.map((w) =>
        h(
          "tr",
          { "data-webhook": w.webhook_key },
          h("td", {}, h("strong", {}, link(w.webhook_key, ["webhooks", w.webhook_key])), w.description ? h("div", { class: "muted" }, w.description) : null, h("div", { class: "muted url" }, w.url)),
          h("td", {}, w.format, destinationKind(w.url) === "http" ? null : h("div", { class: "muted kind" }, `to ${destinationKind(w.url)}`)),
          h("td", {}, w.events.join(", ")),
          h("td", {}, w.filter === null ? h("span", { class: "muted" }, "(none)") : h("code", {}, JSON.stringify(w.filter))),
          h("td", { class: "controls" }, controls(w)),
          h("td", { class: "state" }, webhookState(w)),
          h("td", { class: "num" }, link(String(w.stats.pending), ["deliveries"], { state: "pending", webhook: w.webhook_key })),
          h("td", { class: "num" }, link(String(w.stats.dead), ["deliveries"], { state: "dead", webhook: w.webhook_key })),
          h("td", { class: "num", title: `${w.stats.last_hour.attempts} attempts` }, percent(w.stats.last_hour.success_rate)),
          h(
            "td",
            {},
            (w.disabled || w.paused) && can("operate") ? h("button", { type: "button", class: "enable", onclick: enable(w.webhook_key) }, "Enable") : null,
            " ",
            !can("admin") ? null : w.managed_by_api ? link("Edit", ["webhooks", w.webhook_key, "edit"]) : h("span", { class: "muted", title: `defined in ${w.defined_at}` }, "rules file"),
          ),
        ),
      ),
      "No webhooks.",
    );
  reload = await liveRegion(ctx, region, fetchAll, draw, 5000);
}

/** What a webhook's URL names: http, nats, amqp or redis (its scheme). */
function destinationKind(url) {
  const scheme = String(url || "").split(":")[0];
  return scheme === "https" ? "http" : scheme === "amqps" ? "amqp" : scheme || "http";
}

/** Attempts per hour for 7 days: stacked bars (succeeded, failed) and the p99 line. */
function historyChart(hours) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 840;
  const height = 160;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  svg.setAttribute("id", "history-chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Attempts per hour by outcome, last 7 days");
  const ok = (hr) => hr.outcomes["2xx"] || 0;
  const peak = Math.max(1, ...hours.map((hr) => hr.attempts));
  const slot = width / hours.length;
  hours.forEach((hr, i) => {
    const failed = hr.attempts - ok(hr);
    let y = height;
    for (const [n, cls] of [[ok(hr), "delivered"], [failed, "failed"]]) {
      if (n === 0) continue;
      const bar = document.createElementNS(ns, "rect");
      const barHeight = (n / peak) * (height - 10);
      y -= barHeight;
      bar.setAttribute("x", String(i * slot));
      bar.setAttribute("y", String(y));
      bar.setAttribute("width", String(Math.max(1, slot - 1)));
      bar.setAttribute("height", String(barHeight));
      bar.setAttribute("class", cls);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${time(hr.at)}: ${n} ${cls}`;
      bar.append(title);
      svg.append(bar);
    }
  });
  return svg;
}

async function webhookPage(ctx, key) {
  const region = h("div", { id: "webhook-history" });
  const status = h("p", { role: "status", id: "test-status" });
  let testForm = null;
  if (can("operate")) {
    const w = await api(`/event-webhooks/${enc(key)}`);
    const types = w.events.includes("*") ? ["ping"] : w.events;
    const typeSelect = select("event_type", types.map((t) => [t, t]), types[0], "test-event-type");
    const custom = h("input", { name: "custom_type", id: "test-event-custom", placeholder: "or another type" });
    testForm = h(
      "form",
      {
        class: "inline card",
        id: "test-event",
        onsubmit: async (event) => {
          event.preventDefault();
          status.className = "";
          status.textContent = "Sending a test event…";
          try {
            const sent = await api(`/event-webhooks/${enc(key)}/test`, { method: "POST", body: { event_type: custom.value.trim() || typeSelect.value } });
            status.className = "notice";
            status.replaceChildren(
              `Test event ${sent.event.uuid} sent (marked Taphook-Test: 1). `,
              sent.delivery_id === null ? link("Find its delivery", ["search"], { q: sent.event.uuid }) : link("Follow its delivery", ["deliveries", String(sent.delivery_id)]),
            );
          } catch (e) {
            status.className = "error";
            status.textContent = errorText(e);
          }
        },
      },
      h("label", {}, "Event type", typeSelect),
      h("label", {}, "Other type", custom),
      h("button", { type: "submit" }, "Send test event"),
    );
  }
  page(`Webhook ${key}`, testForm, status, h("h2", {}, "Health, last 7 days"), region, h("h2", {}, "Payload schemas"), await schemaList(key));
  await liveRegion(
    ctx,
    region,
    () => api(`/event-webhooks/${enc(key)}/history`),
    (data) => {
      const busy = data.hours.filter((hr) => hr.attempts > 0).reverse();
      return [
        h("p", { class: "muted" }, `${data.attempts} attempts in 7 days${data.instances > 1 ? `, through ${data.instances} instances` : ""}.`),
        historyChart(data.hours),
        table(
          ["hour", "#attempts", "outcomes", "#p50", "#p99"],
          busy.map((hr) =>
            h(
              "tr",
              {},
              h("td", {}, time(hr.at)),
              h("td", { class: "num" }, String(hr.attempts)),
              h("td", {}, Object.entries(hr.outcomes).map(([k, n]) => `${k}: ${n}`).join(", ")),
              h("td", { class: "num" }, hr.p50_ms === null ? "" : `${hr.p50_ms} ms`),
              h("td", { class: "num" }, hr.p99_ms === null ? "" : `${hr.p99_ms} ms`),
            ),
          ),
          "No attempts in the last 7 days.",
        ),
      ];
    },
    10000,
  );
}

/**
 * The webhook's event types from the catalog, each with the JSON Schema
 * (2020-12) of the body as this webhook delivers it: shown on demand, and
 * downloadable for a receiver's code generator.
 */
async function schemaList(key) {
  const doc = await api("/catalog/asyncapi.json");
  const id = key.replace(/[^A-Za-z0-9_.-]/g, "_");
  const channel = doc.channels[id];
  const op = doc.operations[`deliver_${id}`];
  if (!channel || !op) return h("p", { class: "muted" }, "Not in the catalog.");
  const format = op["x-taphook-format"];
  const shown = h("pre", { id: "schema-shown", class: "payload", hidden: true });
  // A message's name is its event type as the rules write it (its key
  // is that type made safe for AsyncAPI).
  const rows = Object.values(channel.messages).map(({ name: eventType }) => {
    const path = `/catalog/schemas/${enc(format)}/${enc(eventType)}.json`;
    const show = async () => {
      const schema = await api(path);
      shown.hidden = false;
      shown.textContent = JSON.stringify(schema, null, 2);
    };
    const download = async (event) => {
      event.preventDefault();
      const schema = await api(path);
      const a = h("a", { href: URL.createObjectURL(new Blob([JSON.stringify(schema, null, 2)], { type: "application/json" })), download: `${format}-${eventType}.json` });
      a.click();
      URL.revokeObjectURL(a.href);
    };
    return h(
      "tr",
      { "data-schema": eventType },
      h("td", {}, eventType),
      h("td", {}, format),
      h("td", {}, h("button", { type: "button", class: "show-schema", onclick: show }, "Show schema"), " ", h("a", { href: "#", class: "download-schema", onclick: download }, "Download")),
    );
  });
  return h(
    "div",
    { id: "webhook-schemas" },
    h("p", { class: "muted" }, "What this webhook sends, per event type (JSON Schema 2020-12), from the catalog: ", h("code", {}, "GET /v1/catalog/asyncapi.json"), " has every webhook's."),
    table(["event type", "format", ""], rows, "No event types."),
    shown,
  );
}

// ---------------------------------------------------------------- search

async function searchPage(ctx, params) {
  const q = params.get("q") || "";
  searchInput.value = q;
  const region = h("div", { id: "search-results" });
  page(`Search: ${q}`, region);
  if (!q) {
    region.replaceChildren(h("p", { class: "muted" }, "Type a delivery id, an event UUID, a session key, a webhook key, or field=value."));
    return;
  }
  const data = await api(`/search?q=${enc(q)}`);
  if (!ctx.alive()) return;
  const section = (title, id, rows, headings) => [h("h2", {}, title), h("div", { id }, table(headings, rows, "None."))];
  region.replaceChildren(
    ...section("Sessions", "found-sessions", data.sessions.map(sessionRow), ["session", "template_key", "stage", "last event", "at"]),
    ...section(
      "Events",
      "found-events",
      data.events.map((e) => h("tr", {}, h("td", {}, e.event.event_type), h("td", {}, h("code", {}, e.event.uuid)), h("td", {}, link(e.session_key, ["sessions", e.session_key])), h("td", {}, time(e.event.created_at * 1000)))),
      ["event", "uuid", "session", "created"],
    ),
    ...section("Deliveries", "found-deliveries", data.deliveries.map(deliveryRow), ["#id", "webhook", "session", "event", "state", "#attempts", "last status", "next attempt", "created"]),
    ...section("Webhooks", "found-webhooks", data.webhooks.map((w) => h("tr", {}, h("td", {}, link(w.webhook_key, ["webhooks", w.webhook_key])))), ["webhook"]),
    ...(data.note ? [h("p", { class: "muted" }, data.note)] : []),
  );
}

// ---------------------------------------------------------------- audit

function auditRow(e) {
  return h(
    "tr",
    {},
    h("td", {}, time(e.at)),
    h("td", {}, e.token_name),
    h("td", {}, e.role),
    h("td", {}, h("code", {}, e.action)),
    h("td", {}, e.target, e.detail ? h("div", { class: "muted" }, JSON.stringify(e.detail)) : null),
    h("td", {}, badge(e.outcome.result === "ok" ? `${e.outcome.status}` : `${e.outcome.status} ${e.outcome.result}`, e.outcome.result === "ok" ? "delivered" : "failed"), e.outcome.message ? h("div", { class: "muted" }, e.outcome.message) : null),
  );
}

async function audit(ctx) {
  const region = h("div", { id: "audit" });
  page("Audit", h("p", { class: "muted" }, "Every change made through the admin API, newest first: who (the token's name), what, on what, and what came of it."), region);
  const query = (cursor) => `/audit?limit=50${cursor ? `&cursor=${enc(cursor)}` : ""}`;
  await liveRegion(ctx, region, () => api(query()), (data) => pagedTable(["time", "token", "role", "action", "target", "outcome"], "entries", auditRow, query, data, "Nothing changed yet."), 5000);
}

const FORMATS = ["oneschema", "dromo", "dromo-basic", "flatfile"];

async function webhookForm(ctx, key) {
  const editing = key !== undefined;
  const current = editing ? await api(`/event-webhooks/${enc(key)}`) : null;
  if (!ctx.alive()) return;
  const initial = {
    webhook_key: current ? current.webhook_key : "",
    url: current ? current.url : "",
    format: current ? current.format : "oneschema",
    events: current ? current.events.join(", ") : "*",
    description: current && current.description ? current.description : "",
    filter: current && current.filter !== null ? JSON.stringify(current.filter, null, 2) : "",
    secret_key: "",
  };
  const inputs = {
    webhook_key: h("input", { name: "webhook_key", required: true, value: initial.webhook_key }),
    url: h("input", { name: "url", type: "url", required: !editing, value: initial.url }),
    format: select("format", FORMATS.map((f) => [f, f]), initial.format, "format"),
    events: h("input", { name: "events", value: initial.events }),
    description: h("input", { name: "description", value: initial.description }),
    secret_key: h("input", { name: "secret_key", type: "password", autocomplete: "off", placeholder: editing ? "unchanged" : "none" }),
    filter: h("textarea", { name: "filter", placeholder: '{"==": [{"var": "event_type"}, "import_submitted"]}' }, initial.filter),
  };
  const hints = {
    webhook_key: editing ? "Renames the webhook when changed." : "Letters, digits, _, - and .",
    events: "Event types, comma-separated; * for all.",
    filter: "A JSON-logic rule on the envelope; empty for none.",
    secret_key: editing ? "Empty keeps the current secret." : "Signs deliveries when set.",
  };
  const errors = {};
  const fields = Object.entries(inputs).map(([name, input]) => {
    input.id = `field-${name}`;
    errors[name] = h("div", { class: "field-error", id: `error-${name}` });
    return h("label", {}, name, input, hints[name] ? h("span", { class: "muted" }, hints[name]) : null, errors[name]);
  });
  const general = h("div", { class: "error", role: "alert", id: "form-errors" });
  const showErrors = (e) => {
    for (const [name, box] of Object.entries(errors)) {
      const messages = e.fields[name] || [];
      box.textContent = messages.join("; ");
      inputs[name].classList.toggle("invalid", messages.length > 0);
    }
    const elsewhere = Object.entries(e.fields).filter(([name]) => !(name in errors)).flatMap(([name, m]) => m.map((x) => `${name}: ${x}`));
    const listed = Object.keys(e.fields).length ? elsewhere : e.problems;
    general.replaceChildren(h("p", {}, errorText(e)), listed.length ? h("ul", {}, listed.map((p) => h("li", {}, p))) : null);
  };
  const value = (name) => {
    const raw = inputs[name].value.trim();
    if (name === "events") return raw.split(",").map((s) => s.trim()).filter(Boolean);
    if (name === "filter") return raw === "" ? null : JSON.parse(raw);
    if (name === "description") return raw === "" ? null : raw;
    return raw;
  };
  const form = h(
    "form",
    {
      class: "stacked card",
      id: "webhook-form",
      novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        let body = {};
        try {
          for (const name of Object.keys(inputs)) {
            if (editing && inputs[name].value === initial[name]) continue;
            if (name === "secret_key" && inputs[name].value === "") continue;
            body[name] = value(name);
          }
        } catch (e) {
          showErrors({ message: "The filter is not JSON.", fields: { filter: [errorText(e)] }, problems: [] });
          return;
        }
        if (editing && "webhook_key" in body) {
          body.new_webhook_key = body.webhook_key;
          delete body.webhook_key;
        }
        try {
          const saved = editing
            ? await api(`/event-webhooks/${enc(key)}`, { method: "PUT", body })
            : await api("/event-webhooks", { method: "POST", body });
          location.hash = `#/webhooks?saved=${enc(saved.webhook_key)}`;
        } catch (e) {
          if (e.status !== 401) showErrors(e);
        }
      },
    },
    general,
    fields,
    h("div", {}, h("button", { type: "submit" }, editing ? "Save" : "Create"), " ", link("Cancel", ["webhooks"])),
  );
  page(editing ? `Edit webhook ${key}` : "New webhook", form);
}

// ---------------------------------------------------------------- routing

const ROUTES = [
  [/^\/overview$/, "overview", overview],
  [/^\/sessions$/, "sessions", sessions],
  [/^\/sessions\/(.+)$/, "sessions", session],
  [/^\/deliveries$/, "deliveries", deliveries],
  [/^\/deliveries\/(-?\d+)$/, "deliveries", delivery],
  [/^\/webhooks$/, "webhooks", webhooks],
  [/^\/webhooks\/new$/, "webhooks", (ctx) => webhookForm(ctx)],
  [/^\/webhooks\/([^/]+)\/edit$/, "webhooks", webhookForm],
  [/^\/webhooks\/([^/]+)$/, "webhooks", webhookPage],
  [/^\/search$/, "search", searchPage],
  [/^\/audit$/, "audit", audit],
];

function decode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

async function route() {
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    showSignIn("");
    return;
  }
  if (!me) {
    try {
      me = await api("/whoami");
    } catch {
      return;
    }
  }
  who.textContent = `signed in as ${me.name} (${me.role})`;
  who.hidden = false;
  searchForm.hidden = false;
  nav.hidden = false;
  signOutButton.hidden = false;
  const raw = location.hash.replace(/^#/, "") || "/overview";
  const [path, query = ""] = raw.split("?");
  const params = new URLSearchParams(query);
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  const ctx = viewContext();
  if (!found) {
    page("Not found", h("p", {}, "No such page. "), link("Overview", ["overview"]));
    return;
  }
  const [pattern, section, view] = found;
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("current", a.dataset.section === section);
  const args = pattern.exec(path).slice(1).map(decode);
  try {
    await view(ctx, ...(args.length ? [...args, params] : [params]));
  } catch (e) {
    if (e.status !== 401 && ctx.alive()) page("Something went wrong", h("p", { class: "error" }, errorText(e)));
  }
}

searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  location.hash = `#/search?${new URLSearchParams({ q: searchInput.value.trim() })}`;
});

window.addEventListener("hashchange", route);
route();
