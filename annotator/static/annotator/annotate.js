/* FaceBench annotation screen.
 *
 * Three parts, each small:
 *  - the queue: up to QUEUE_SIZE leased items (queue[0] is on screen), refilled from
 *    POST /api/campaigns/{id}/next/ whenever it runs short; the images of every queued item are
 *    preloaded so the next screen appears at once;
 *  - the outbox: every answer (and skip) gets a UUID idempotency key and is written to
 *    localStorage BEFORE the screen advances; a sender posts the outbox in order and removes an
 *    entry only once the server has answered for it, so a reload, a crash or a network drop
 *    loses nothing, and a retry can never store an answer twice (the server dedupes by key);
 *  - the screen: keyboard first, buttons mirror every key, a flash confirms each answer.
 *
 * The page state is mirrored on #annotate as data attributes (state, queued, item, outbox) so
 * that tests can wait for it instead of sleeping.
 */
(() => {
  "use strict";

  const cfg = JSON.parse(document.getElementById("annotate-config").textContent);
  const QUEUE_SIZE = 4;
  const MAX_NEXT_COUNT = 8; // the API refuses more per call
  const OUTBOX_KEY = `facebench.outbox.v1.u${cfg.userId}.c${cfg.campaignId}`;
  const MAX_BACKOFF_MS = 30000;
  const IMAGE_TIMEOUT_MS = 15000;

  const $ = (id) => document.getElementById(id);
  const root = $("annotate");
  const stage = $("stage");
  const banner = $("banner");
  const pill = $("save-status");
  const flashEl = $("flash");
  const announceEl = $("announce");
  const panelTemplate = $("face-panel-template");

  const LABELS = {
    rating: { 1: "1 · Very poor", 2: "2 · Poor", 3: "3 · Fair", 4: "4 · Good", 5: "5 · Excellent" },
    choice: { left: "Left better", right: "Right better", tie: "Tie", both_bad: "Both bad" },
    flag: { broken: "Flagged: broken / no face" },
  };
  const ARROWS = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "tie", ArrowUp: "both_bad" };

  // ---------------------------------------------------------------- small helpers

  function uuid4() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    // randomUUID only exists in secure contexts (https, localhost); getRandomValues everywhere.
    const b = window.crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function csrfToken() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (m) return decodeURIComponent(m[1]);
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  /* POST JSON; resolves with {status, ok, data, isJson} and rejects only on a network error. */
  async function postJSON(url, body) {
    const res = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body || {}),
    });
    const isJson = (res.headers.get("Content-Type") || "").includes("json");
    let data = null;
    if (isJson) {
      try {
        data = await res.json();
      } catch (_) {
        data = null;
      }
    }
    return { status: res.status, ok: res.ok, data, isJson };
  }

  function detailOf(r) {
    const d = r.data;
    if (!d) return `HTTP ${r.status}`;
    if (typeof d.detail === "string") return d.detail;
    if (typeof d.message === "string" && d.message) return d.message;
    return JSON.stringify(d).slice(0, 300);
  }

  // A logged-out session or a stale CSRF token: the answers are fine, the session is not, so
  // they must stay in the outbox (never be dropped as "refused").
  function isAuthProblem(r) {
    if (r.status === 401) return true;
    if (r.ok && !r.isJson) return true; // redirected to the login page
    return r.status === 403 && /csrf|credentials|authenticat/i.test(detailOf(r));
  }

  function backoffAfter(ms) {
    const next = Math.min(MAX_BACKOFF_MS, ms ? ms * 2 : 1000);
    return next;
  }

  function withJitter(ms) {
    return ms / 2 + Math.random() * (ms / 2);
  }

  // ---------------------------------------------------------------- the outbox (localStorage)

  const outbox = {
    memory: [],
    persistent: true,
    all() {
      if (!this.persistent) return this.memory.slice();
      try {
        const raw = window.localStorage.getItem(OUTBOX_KEY);
        return raw ? JSON.parse(raw) : [];
      } catch (_) {
        this.persistent = false;
        return this.memory.slice();
      }
    },
    write(entries) {
      this.memory = entries.slice();
      if (!this.persistent) return;
      try {
        if (entries.length) window.localStorage.setItem(OUTBOX_KEY, JSON.stringify(entries));
        else window.localStorage.removeItem(OUTBOX_KEY);
      } catch (_) {
        // Storage full or disabled: keep going in memory, but say that a reload would lose them.
        this.persistent = false;
        showNotice("This browser does not let the page store answers locally: do not reload until “All saved”.");
      }
    },
    // Read-modify-write on every change so two tabs of the same campaign never overwrite each
    // other's entries; a key sent by both tabs is deduplicated by the server.
    append(entry) {
      this.write(this.all().concat([entry]));
    },
    remove(key) {
      this.write(this.all().filter((e) => e.key !== key));
    },
    itemIds() {
      return new Set(this.all().map((e) => e.item.item_id));
    },
  };

  // ---------------------------------------------------------------- page state

  const queue = []; // ITEMs from the API; queue[0] is on screen
  const finished = new Set(); // item ids answered or skipped on this page (until undone)
  const preloaded = new Map(); // url -> Image, holds the preloads alive
  let shown = null; // {item, at}: at = performance.now() when its images were displayed
  let paused = Boolean(cfg.paused);
  let exhausted = false;
  let exhaustedMessage = "";
  let fetching = false;
  let refillTimer = null;
  let refillBackoff = 0;
  let doneByMe = Number(cfg.doneByMe) || 0;
  let left = Number(cfg.left) || 0;

  const sender = {
    running: false,
    inflightKey: null,
    flight: null,
    timer: null,
    backoff: 0,
    networkTrouble: false,
    authBlocked: false,
  };

  function setState(state) {
    root.dataset.state = state;
    stage.setAttribute("aria-busy", state === "ready" ? "false" : "true");
  }

  function updateCounters() {
    $("done-by-me").textContent = String(doneByMe);
    $("left").textContent = String(Math.max(left, 0));
    root.dataset.queued = String(queue.length);
  }

  function renderStatus() {
    const n = outbox.all().length;
    root.dataset.outbox = String(n);
    const offline = !navigator.onLine || sender.networkTrouble;
    let text;
    let tone;
    if (n === 0) {
      text = "All saved";
      tone = "ok";
    } else if (sender.authBlocked) {
      text = `${n} waiting to send (logged out)`;
      tone = "bad";
    } else {
      text = `${n} waiting to send${offline ? " (offline)" : ""}`;
      tone = "wait";
    }
    if (pill.textContent !== text) pill.textContent = text;
    pill.className = `pill pill-${tone}`;
  }

  function showNotice(text) {
    banner.hidden = false;
    banner.classList.remove("banner-paused");
    banner.textContent = text;
  }

  function announce(text) {
    announceEl.textContent = text;
  }

  function flash(text, button) {
    flashEl.textContent = text;
    flashEl.classList.remove("show");
    void flashEl.offsetWidth; // restart the CSS animation
    flashEl.classList.add("show");
    if (button) {
      button.classList.add("pressed");
      setTimeout(() => button.classList.remove("pressed"), 250);
    }
    announce(text);
  }

  function logRejection(entry, r) {
    const list = $("rejection-list");
    const li = document.createElement("li");
    const what = entry.kind === "skip" ? "skip" : entry.label;
    li.textContent = `Item ${entry.item.display_index + 1} (${what}): ${detailOf(r)}`;
    list.prepend(li);
    $("rejections").hidden = false;
  }

  // ---------------------------------------------------------------- the screen

  function buildPanel(face, protocol) {
    const node = panelTemplate.content.firstElementChild.cloneNode(true);
    const side = face.position === "single" ? "" : face.position === "left" ? "Left" : "Right";
    node.classList.add(`face-${face.position}`);
    const caption = node.querySelector(".face-label");
    if (side) caption.innerHTML = `${side} face <kbd>${side === "Left" ? "←" : "→"}</kbd>`;
    else caption.remove();
    const crop = node.querySelector(".crop");
    crop.src = face.crop_url;
    crop.alt = side ? `${side} face, close-up` : "Face to rate, close-up";
    const thumb = node.querySelector(".thumb");
    thumb.src = face.image_url;
    thumb.alt = side ? `Whole image of the ${side.toLowerCase()} face` : "Whole image the face comes from";
    const [x0, y0, x1, y1] = face.box;
    const w = face.image_width || 1;
    const h = face.image_height || 1;
    // Percentages of the image, so the box follows the thumbnail at any size.
    const box = node.querySelector(".face-box");
    box.style.left = `${(100 * x0) / w}%`;
    box.style.top = `${(100 * y0) / h}%`;
    box.style.width = `${(100 * (x1 - x0)) / w}%`;
    box.style.height = `${(100 * (y1 - y0)) / h}%`;
    thumb.style.aspectRatio = `${w} / ${h}`;
    if (protocol === "pairwise") node.setAttribute("aria-label", `${side} face`);
    return node;
  }

  function waitForImage(img) {
    if (img.complete && img.naturalWidth > 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), IMAGE_TIMEOUT_MS);
      img.addEventListener("load", () => { clearTimeout(timer); resolve(true); }, { once: true });
      img.addEventListener("error", () => { clearTimeout(timer); resolve(false); }, { once: true });
    });
  }

  function showStageMessage(html) {
    stage.replaceChildren();
    const p = document.createElement("div");
    p.className = "stage-message";
    p.innerHTML = html;
    stage.append(p);
  }

  function showCurrent() {
    updateCounters();
    const item = queue[0];
    if (!item) {
      shown = null;
      root.dataset.item = "";
      $("item-index").textContent = "–";
      if (paused) {
        setState("paused");
        showStageMessage("<p><strong>Annotation is paused for you.</strong></p><p class=\"muted\">See the message above.</p>");
      } else if (exhausted) {
        setState("empty");
        showStageMessage("");
        const box = stage.firstElementChild;
        const p = document.createElement("p");
        p.innerHTML = "<strong></strong>";
        p.firstChild.textContent = exhaustedMessage || "No more items for you in this campaign.";
        const again = document.createElement("button");
        again.type = "button";
        again.className = "secondary";
        again.textContent = "Check for more";
        again.addEventListener("click", () => { exhausted = false; refill(); showCurrent(); });
        const home = document.createElement("a");
        home.href = cfg.homeUrl;
        home.textContent = "Back to my campaigns";
        box.append(p, again, " ", home);
      } else {
        setState("loading");
        const offline = !navigator.onLine || refillTimer !== null;
        showStageMessage(offline ? "<p>Waiting for the connection to load more items…</p>" : "<p>Loading…</p>");
      }
      return;
    }
    if (shown && shown.item === item) return;
    const current = { item, at: null };
    shown = current;
    root.dataset.item = String(item.item_id);
    $("item-index").textContent = String(item.display_index + 1); // counted from 1 for people
    setState("loading");
    const wrap = document.createElement("div");
    wrap.className = `faces faces-${item.protocol}`;
    for (const face of item.faces) wrap.append(buildPanel(face, item.protocol));
    stage.replaceChildren(wrap);
    const crops = Array.from(wrap.querySelectorAll("img"));
    Promise.all(crops.map(waitForImage)).then((loaded) => {
      if (shown !== current) return;
      if (loaded.some((ok) => !ok)) {
        const warn = document.createElement("p");
        warn.className = "image-error";
        warn.innerHTML = "An image did not load. Press <kbd>F</kbd> if it is broken or shows no face, or <kbd>S</kbd> to skip.";
        stage.append(warn);
      }
      // Time on screen starts when the faces are actually visible.
      current.at = performance.now();
      setState("ready");
    });
    preload();
  }

  function preload() {
    const wanted = new Set();
    for (const item of queue) {
      for (const face of item.faces) {
        for (const url of [face.crop_url, face.image_url]) {
          wanted.add(url);
          if (!preloaded.has(url)) {
            const img = new Image();
            img.decoding = "async";
            img.src = url;
            preloaded.set(url, img);
          }
        }
      }
    }
    for (const url of Array.from(preloaded.keys())) if (!wanted.has(url)) preloaded.delete(url);
  }

  function enterPaused(message) {
    paused = true;
    queue.length = 0;
    banner.hidden = false;
    banner.classList.add("banner-paused");
    banner.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = "You are paused in this campaign. ";
    banner.append(strong, message || "Ask the campaign's researchers why.");
    showCurrent();
  }

  // ---------------------------------------------------------------- answering

  function currentItemIfReady() {
    if (!shown || shown.at === null || root.dataset.state !== "ready") return null;
    return shown.item;
  }

  function advance(item) {
    finished.add(item.item_id);
    if (queue[0] === item) queue.shift();
    showCurrent();
    refill();
    kickSender();
  }

  function answer(kind, value, button) {
    const item = currentItemIfReady();
    if (!item) return;
    const key = uuid4();
    const body = {
      idempotency_key: key,
      item: item.item_id,
      time_on_screen_ms: Math.max(1, Math.round(performance.now() - shown.at)),
    };
    body[kind] = kind === "rating" ? Number(value) : value;
    const label = LABELS[kind][value];
    // Stored first: from here on a reload or a dead network cannot lose this answer.
    outbox.append({
      key, kind: "judgment", url: cfg.judgmentsUrl, body, item, label, queuedAt: new Date().toISOString(),
    });
    doneByMe += 1;
    left -= 1;
    flash(`✓ ${label}`, button);
    renderStatus();
    advance(item);
  }

  function skip(button) {
    const item = currentItemIfReady();
    if (!item) return;
    outbox.append({
      key: uuid4(), kind: "skip", url: cfg.skipUrl, body: { item: item.item_id }, item, label: "Skipped",
      queuedAt: new Date().toISOString(),
    });
    flash("Skipped", button);
    renderStatus();
    advance(item);
  }

  function putBack(item) {
    finished.delete(item.item_id);
    const at = queue.findIndex((q) => q.item_id === item.item_id);
    if (at >= 0) queue.splice(at, 1);
    queue.unshift(item);
    exhausted = false;
    showCurrent();
  }

  let undoing = false;
  async function undo(button) {
    if (undoing || paused) return;
    undoing = true;
    try {
      for (;;) {
        const entries = outbox.all();
        const last = entries[entries.length - 1];
        if (last && last.key === sender.inflightKey) {
          // Being sent right now: wait for the server's answer, then decide locally or remotely.
          await sender.flight.catch(() => null);
          continue;
        }
        if (last) {
          // Not acknowledged yet: take it back here, the server never knew.
          outbox.remove(last.key);
          if (last.kind === "judgment") {
            doneByMe -= 1;
            left += 1;
          }
          renderStatus();
          putBack(last.item);
          flash(`↶ Undone: ${last.label}`, button);
          return;
        }
        let r;
        try {
          r = await postJSON(cfg.undoUrl, {});
        } catch (_) {
          flash("Cannot undo while offline", button);
          return;
        }
        if (isAuthProblem(r)) {
          blockOnAuth();
          return;
        }
        if (r.ok && r.data && r.data.item) {
          doneByMe = Math.max(0, doneByMe - 1);
          left += 1;
          putBack(r.data.item);
          flash("↶ Undone", button);
        } else {
          flash(r.status === 409 ? detailOf(r) : `Cannot undo: ${detailOf(r)}`, button);
        }
        return;
      }
    } finally {
      undoing = false;
    }
  }

  // ---------------------------------------------------------------- sending the outbox

  function kickSender() {
    if (sender.timer !== null || sender.authBlocked) return; // waiting out a backoff
    pump();
  }

  function retrySoon() {
    sender.backoff = backoffAfter(sender.backoff);
    clearTimeout(sender.timer);
    sender.timer = setTimeout(() => { sender.timer = null; pump(); }, withJitter(sender.backoff));
  }

  function blockOnAuth() {
    sender.authBlocked = true;
    const a = document.createElement("a");
    a.href = `${cfg.loginUrl}?next=${encodeURIComponent(location.pathname)}`;
    a.target = "_blank";
    a.rel = "noopener";
    a.textContent = "Log in again";
    banner.hidden = false;
    banner.replaceChildren(
      "Your session has ended. Your answers are kept on this computer. ", a,
      " (in a new tab), then reload this page to send them.",
    );
    renderStatus();
  }

  async function pump() {
    if (sender.running || sender.authBlocked) return;
    sender.running = true;
    try {
      for (;;) {
        const entry = outbox.all()[0];
        if (!entry) break;
        sender.inflightKey = entry.key;
        sender.flight = postJSON(entry.url, entry.body);
        let r;
        try {
          r = await sender.flight;
        } catch (_) {
          sender.networkTrouble = true;
          retrySoon();
          break;
        } finally {
          sender.inflightKey = null;
          sender.flight = null;
        }
        sender.networkTrouble = false;
        if (isAuthProblem(r)) {
          blockOnAuth();
          break;
        }
        if (r.ok) {
          outbox.remove(entry.key);
          sender.backoff = 0;
          onStored(entry, r.data || {});
        } else if (r.status >= 500 || r.status === 429 || r.status === 408) {
          retrySoon();
          break;
        } else {
          // 400 / 403 / 404 / 409: this entry can never succeed. Drop it, and say so.
          outbox.remove(entry.key);
          onRefused(entry, r);
        }
        renderStatus();
      }
    } finally {
      sender.running = false;
      renderStatus();
    }
    if (!outbox.all().length && queue.length < QUEUE_SIZE && !exhausted) refill();
  }

  function onStored(entry, data) {
    if (data.gold_paused) enterPaused(data.message);
    else if (data.message) showNotice(data.message);
    if (queue.length < QUEUE_SIZE && !exhausted) refill();
  }

  function onRefused(entry, r) {
    logRejection(entry, r);
    if (entry.kind === "judgment") {
      doneByMe = Math.max(0, doneByMe - 1);
      left += 1;
      updateCounters();
    }
    if (r.status === 403) enterPaused(detailOf(r));
  }

  // ---------------------------------------------------------------- filling the queue

  function refillLater() {
    if (refillTimer !== null) return;
    refillBackoff = backoffAfter(refillBackoff);
    refillTimer = setTimeout(() => { refillTimer = null; refill(); }, withJitter(refillBackoff));
  }

  async function refill() {
    if (fetching || paused || sender.authBlocked || queue.length >= QUEUE_SIZE) return;
    fetching = true;
    let r;
    try {
      // The server lists my still-leased, unanswered items first: those on screen here and those
      // whose answers are still in the outbox. Ask for enough to get QUEUE_SIZE beyond them.
      const count = Math.min(MAX_NEXT_COUNT, QUEUE_SIZE + outbox.itemIds().size);
      r = await postJSON(cfg.nextUrl, { count });
    } catch (_) {
      r = null;
    } finally {
      fetching = false;
    }
    // An answer acknowledged while this request was in flight may have paused the annotator.
    if (paused) return;
    if (r === null || r.status >= 500 || r.status === 429) {
      refillLater();
      showCurrent();
      return;
    }
    refillBackoff = 0;
    if (isAuthProblem(r)) {
      blockOnAuth();
      return;
    }
    if (!r.ok) {
      showNotice(`Cannot load items: ${detailOf(r)}`);
      return;
    }
    const data = r.data || {};
    if (data.paused) {
      enterPaused(data.message);
      return;
    }
    const items = Array.isArray(data.items) ? data.items : [];
    const pending = outbox.itemIds();
    const have = new Set(queue.map((q) => q.item_id));
    let added = 0;
    for (const item of items) {
      if (queue.length >= QUEUE_SIZE) break;
      if (have.has(item.item_id) || finished.has(item.item_id) || pending.has(item.item_id)) continue;
      queue.push(item);
      have.add(item.item_id);
      added += 1;
    }
    exhausted = items.length === 0;
    exhaustedMessage = data.message || "";
    preload();
    showCurrent();
    // Answers acknowledged meanwhile free their slots: ask again rather than show a short queue.
    if (added > 0 && queue.length < QUEUE_SIZE && !outbox.all().length) refill();
  }

  // ---------------------------------------------------------------- keys and buttons

  function keyTargetIsTyping(target) {
    if (!target || !target.closest) return false;
    return Boolean(target.closest("input, textarea, select, [contenteditable=''], [contenteditable='true'], dialog"));
  }

  document.addEventListener("keydown", (e) => {
    if (e.repeat || e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
    if (keyTargetIsTyping(e.target) || document.querySelector("dialog[open], [aria-modal='true']")) return;
    const key = e.key;
    const lower = key.length === 1 ? key.toLowerCase() : key;
    const button = (sel) => root.querySelector(sel);
    if (cfg.protocol === "likert" && /^[1-5]$/.test(key)) {
      answer("rating", Number(key), button(`.answer[data-kind=rating][data-value="${key}"]`));
    } else if (cfg.protocol === "pairwise" && ARROWS[key]) {
      answer("choice", ARROWS[key], button(`.answer[data-kind=choice][data-value="${ARROWS[key]}"]`));
    } else if (lower === "f") {
      answer("flag", "broken", button(".answer[data-kind=flag]"));
    } else if (lower === "s") {
      skip($("skip-button"));
    } else if (lower === "u") {
      undo($("undo-button"));
    } else {
      return;
    }
    e.preventDefault(); // arrows must not scroll the page
  });

  for (const b of root.querySelectorAll(".answer")) {
    b.addEventListener("click", () => {
      const kind = b.dataset.kind;
      answer(kind, kind === "rating" ? Number(b.dataset.value) : b.dataset.value, b);
    });
  }
  $("skip-button").addEventListener("click", (e) => skip(e.currentTarget));
  $("undo-button").addEventListener("click", (e) => undo(e.currentTarget));

  // ---------------------------------------------------------------- connectivity and start

  window.addEventListener("online", () => {
    sender.networkTrouble = false;
    clearTimeout(sender.timer);
    sender.timer = null;
    sender.backoff = 0;
    pump();
    if (refillTimer !== null) {
      clearTimeout(refillTimer);
      refillTimer = null;
      refillBackoff = 0;
      refill();
    }
    renderStatus();
  });
  window.addEventListener("offline", renderStatus);
  // Another tab of the same campaign changed the outbox.
  window.addEventListener("storage", (e) => { if (e.key === OUTBOX_KEY) renderStatus(); });

  // Answers still in the outbox from an earlier page count as given (they will be sent).
  const unsent = outbox.all().filter((e) => e.kind === "judgment").length;
  doneByMe += unsent;
  left -= unsent;
  renderStatus();
  if (paused) enterPaused(cfg.pauseReason);
  else showCurrent();
  pump(); // resume whatever an earlier page left unsent
  refill();
})();
