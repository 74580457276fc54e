// The web app's browser test: two people, each in their own browser context
// on a different gateway replica, driven by playwright-core on Debian's
// Chromium (never a downloaded browser).
//
//   GATEWAY_URLS=http://127.0.0.1:8080,http://127.0.0.1:8081 ARTIFACTS_DIR=/tmp/shots npm run test:browser
//
// GATEWAY_URLS (required) lists the gateways' base URLs; ARTIFACTS_DIR
// (optional, default a temporary folder) receives the screenshots. The Go
// test harness (e2e TestBrowser) starts the whole system and sets both.
// Every wait is a Playwright auto-waiting locator or waitForFunction with a
// deadline: there are no fixed sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const GATEWAYS = (process.env.GATEWAY_URLS ?? "")
  .split(",")
  .map((s) => s.trim().replace(/\/+$/, ""))
  .filter(Boolean);
if (GATEWAYS.length === 0) {
  throw new Error(
    "GATEWAY_URLS is not set: give the base URLs of the running gateways, comma-separated, " +
      "e.g. GATEWAY_URLS=http://127.0.0.1:8080,http://127.0.0.1:8081 npm run test:browser " +
      "(the Go test harness, e2e TestBrowser, starts the system and sets it)",
  );
}
const BASE_A = GATEWAYS[0];
const BASE_B = GATEWAYS[1 % GATEWAYS.length];
const ARTIFACTS = process.env.ARTIFACTS_DIR || join(tmpdir(), "communications-web-artifacts");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const WAIT_MS = 15_000;

const PHONE = { width: 375, height: 667 };
const DESKTOP = { width: 1280, height: 800 };

const suffix = `${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
const PASSWORD = "correct horse battery staple";

/**
 * person opens a browser context for one person on one gateway and records
 * what must never happen: uncaught errors, dialogs (alert), requests to
 * another origin.
 */
async function person(browser, name, base, viewport) {
  const context = await browser.newContext({ viewport, baseURL: base });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const p = { name, base, context, page, username: `${name}_${suffix}`, pageErrors: [], dialogs: [], foreign: [] };
  page.on("pageerror", (err) => p.pageErrors.push(String(err)));
  page.on("dialog", (d) => {
    p.dialogs.push(`${d.type()}: ${d.message()}`);
    void d.dismiss();
  });
  page.on("request", (r) => {
    const url = r.url();
    if (url.startsWith("data:")) return;
    const origin = new URL(url).origin;
    if (origin !== base && origin !== base.replace(/^http/, "ws")) p.foreign.push(url);
  });
  return p;
}

/** text waits until a message with this text is in the person's message list. */
function messageWith(page, text) {
  return page.getByTestId("message").filter({ hasText: text });
}

async function registerAndEnter(p) {
  const { page } = p;
  await page.goto("/register");
  await page.getByLabel("Username").fill(p.username);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByTestId("auth-submit").click();
  await page.waitForURL(/\/chats\/1$/);
  await page.getByTestId("chat-title").filter({ hasText: "general" }).waitFor();
  await page.getByTestId("current-user").filter({ hasText: p.username }).waitFor();
  await page.locator('[data-testid="connection"][data-state="open"]').waitFor();
}

/** chatLink is the person's link to a chat in the chat list. */
function chatLink(page, id) {
  return page.locator(`[data-testid="chat-link"][data-chat-id="${id}"]`);
}

/** send types text into the composer and sends it with Enter. */
async function send(page, text) {
  const input = page.getByTestId("composer-input");
  await input.fill(text);
  await input.press("Enter");
}

/**
 * unlabelled lists the visible controls of a page that have no accessible
 * name: a <label>, aria-label, aria-labelledby or (buttons, links) text.
 */
async function unlabelled(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("input, textarea, select, button, a[href]")]
      .filter((el) => el.getClientRects().length > 0)
      .filter((el) => {
        if (el.getAttribute("aria-label")?.trim()) return false;
        if (el.getAttribute("aria-labelledby")) return false;
        if (el.labels && [...el.labels].some((l) => l.textContent.trim())) return false;
        if ((el.tagName === "BUTTON" || el.tagName === "A") && el.textContent.trim()) return false;
        return true;
      })
      .map((el) => el.outerHTML.slice(0, 120)),
  );
}

/**
 * seed sends n messages to a chat over a websocket of its own in the
 * person's page, one after the other (each after the previous one's ack,
 * again after a while when rate limited), and resolves with the number
 * acknowledged.
 */
async function seed(page, chatId, n, prefix) {
  return page.evaluate(
    ({ chatId, n, prefix }) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`${location.origin.replace(/^http/, "ws")}/ws`);
        let acked = 0;
        const sendOne = () =>
          ws.send(JSON.stringify({ type: "send", id: `seed-${acked}`, chat_id: chatId, client_msg_id: `${prefix}-${acked}`.replace(/\s+/g, "-"), text: `${prefix} ${acked + 1}` }));
        ws.onmessage = (m) => {
          for (const line of String(m.data).split("\n")) {
            if (!line.trim()) continue;
            const ev = JSON.parse(line);
            if (ev.type === "hello") sendOne();
            else if (ev.type === "ack") {
              acked++;
              if (acked === n) {
                ws.close(1000);
                resolve(acked);
              } else sendOne();
            } else if (ev.type === "error" && ev.id?.startsWith("seed-")) {
              if (ev.retryable) setTimeout(sendOne, 1000);
              else reject(new Error(line));
            }
          }
        };
        ws.onclose = (c) => {
          if (acked < n) reject(new Error(`seeding websocket closed with ${c.code} after ${acked} messages`));
        };
      }),
    { chatId, n, prefix },
  );
}

/**
 * serverUnread waits until the server's unread count of a chat, for the
 * person of page (GET /api/v1/chats), is n: it asks every 250 ms until the
 * deadline.
 */
async function serverUnread(page, chatId, n) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const unread = await page.evaluate(async (chatId) => {
      const r = await fetch("/api/v1/chats", { credentials: "same-origin" });
      const { chats } = await r.json();
      const chat = chats.find((c) => c.id === chatId);
      if (!chat) throw new Error(`chat ${chatId} is not in the list`);
      return chat.unread ?? 0;
    }, chatId);
    if (unread === n) return;
    if (Date.now() > deadline) assert.fail(`the server counts ${unread} unread in chat ${chatId}, not ${n}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** markPage sets a flag that a page load would wipe out. */
async function markPage(page) {
  await page.evaluate(() => {
    window.__noReload = true;
  });
}

async function assertNotReloaded(page) {
  assert.equal(await page.evaluate(() => window.__noReload === true), true, "the page was reloaded");
}

test("two people chat in real time across two gateway replicas", async (t) => {
  await mkdir(ARTIFACTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  t.after(() => browser.close());

  // A is on a desktop on the first gateway, B on a phone on the second.
  const a = await person(browser, "alice", BASE_A, DESKTOP);
  const b = await person(browser, "bob", BASE_B, PHONE);
  const pa = a.page;
  const pb = b.page;
  const state = { chatId: 0, chatName: `team-${suffix}`, directId: 0, historyId: 0 };

  // Steps depend on each other: after the first failure the rest are
  // skipped rather than failing with confusing follow-on errors.
  let failed = false;
  const step = async (name, fn) => {
    await t.test(name, { skip: failed && "an earlier step failed" }, async () => {
      try {
        await fn();
      } catch (err) {
        failed = true;
        const file = join(ARTIFACTS, `failed-${name.replace(/[^a-z0-9]+/gi, "-")}`);
        await Promise.allSettled([pa.screenshot({ path: `${file}-a.png` }), pb.screenshot({ path: `${file}-b.png` })]);
        throw err;
      }
    });
  };

  await step("both register and log in, each on its own gateway", async () => {
    await Promise.all([registerAndEnter(a), registerAndEnter(b)]);
    // A wrong password is refused with the server's message.
    const other = await browser.newContext({ baseURL: BASE_A });
    t.after(() => other.close());
    const po = await other.newPage();
    po.setDefaultTimeout(WAIT_MS);
    await po.goto("/login");
    await po.getByLabel("Username").fill(a.username);
    await po.getByLabel("Password").fill("not the password");
    await po.getByTestId("auth-submit").click();
    await po.locator('[data-testid="auth-error"][role="alert"][data-code="bad_credentials"]').waitFor();
    assert.deepEqual(await unlabelled(po), []);
  });

  await step("on a phone the chat list folds away behind a button", async () => {
    assert.equal(await pb.getByTestId("sidebar").isVisible(), false, "the chat list shows on a 375 px screen");
    const toggle = pb.getByTestId("toggle-chats");
    assert.equal(await toggle.getAttribute("aria-expanded"), "false");
    await toggle.click();
    await pb.getByTestId("sidebar").waitFor({ state: "visible" });
    assert.equal(await toggle.getAttribute("aria-expanded"), "true");
    assert.equal(await chatLink(pb, 1).getAttribute("aria-current"), "page");
    await pb.keyboard.press("Escape");
    await pb.getByTestId("sidebar").waitFor({ state: "hidden" });
    assert.equal(await pa.getByTestId("sidebar").isVisible(), true, "the chat list is hidden on a 1280 px screen");
  });

  await step("A's create-chat dialog shows the server's errors", async () => {
    await pa.getByTestId("new-chat").click();
    const dialog = pa.getByTestId("create-chat-dialog");
    await dialog.waitFor();
    // The name field has focus when the dialog opens.
    assert.equal(await pa.evaluate(() => document.activeElement?.getAttribute("data-testid")), "chat-name-input");
    await dialog.getByLabel("Name").fill("GENERAL");
    await dialog.getByTestId("dialog-submit").click();
    await dialog.locator('[data-testid="dialog-error"][role="alert"][data-code="name_taken"]').waitFor();
    await dialog.getByLabel("Name").fill(state.chatName);
    await dialog.getByLabel("Members").fill(`nobody_${suffix}`);
    await dialog.getByTestId("dialog-submit").click();
    await dialog.locator('[data-testid="dialog-error"][data-code="unknown_user"]').waitFor();
    assert.match(await dialog.getByTestId("dialog-error").textContent(), /\S/);
    assert.deepEqual(await unlabelled(pa), []);
  });

  await step("A creates a chat with B as member", async () => {
    const dialog = pa.getByTestId("create-chat-dialog");
    await dialog.getByLabel("Description (optional)").fill("Planning the release");
    await dialog.getByLabel("Members").fill(b.username);
    await dialog.getByTestId("dialog-submit").click();
    await dialog.waitFor({ state: "detached" });
    await pa.waitForURL(/\/chats\/\d+$/);
    state.chatId = Number(new URL(pa.url()).pathname.split("/").pop());
    assert.ok(state.chatId > 1, `new chat id ${state.chatId}`);
    await pa.getByTestId("chat-title").filter({ hasText: state.chatName }).waitFor();
    await pa.getByTestId("chat-description").filter({ hasText: "Planning the release" }).waitFor();
    assert.equal(await chatLink(pa, state.chatId).getAttribute("aria-current"), "page");
    assert.equal(await chatLink(pa, 1).getAttribute("aria-current"), null);
    await pa.getByTestId("edit-chat").waitFor({ state: "visible" });
  });

  await step("B sees the new chat live and opens it", async () => {
    await markPage(pb);
    await pb.getByTestId("toggle-chats").click();
    await chatLink(pb, state.chatId).filter({ hasText: state.chatName }).waitFor();
    await chatLink(pb, state.chatId).click();
    await pb.waitForURL(new RegExp(`/chats/${state.chatId}$`));
    await pb.getByTestId("chat-title").filter({ hasText: state.chatName }).waitFor();
    await pb.getByTestId("sidebar").waitFor({ state: "hidden" });
    await assertNotReloaded(pb);
  });

  await step("B is not offered to edit the chat", async () => {
    await pb.getByTestId("chat-members").filter({ hasText: a.username }).waitFor();
    assert.equal(await pb.getByTestId("edit-chat").isVisible(), false, "B is offered edit");
  });

  await step("they exchange messages both ways in real time", async () => {
    await markPage(pa);
    await markPage(pb);
    const fromA = `hello from A ${suffix}`;
    await send(pa, fromA);
    await messageWith(pb, fromA).waitFor();
    await messageWith(pa, fromA).waitFor();
    // The sender's own message shows that it is sent (stored, with a seq).
    await messageWith(pa, fromA).locator('[data-testid="message-state"][data-state="sent"]').waitFor();
    assert.equal(await messageWith(pa, fromA).getAttribute("data-state"), "sent");
    assert.equal(await messageWith(pb, fromA).getByTestId("message-state").count(), 0, "no state on someone else's message");
    assert.equal(await messageWith(pb, fromA).getByTestId("message-sender").textContent(), a.username);
    assert.equal(await messageWith(pb, fromA).locator("time").count(), 1, "the message shows its time");

    const fromB = `hi A, B here ${suffix}`;
    await pb.getByTestId("composer-input").fill(fromB);
    await pb.getByTestId("send").click();
    await messageWith(pa, fromB).waitFor();
    assert.equal(await messageWith(pa, fromB).getByTestId("message-sender").textContent(), b.username);

    // Shift+Enter starts a new line; Enter sends.
    const input = pa.getByTestId("composer-input");
    await input.fill("");
    await input.pressSequentially(`line one ${suffix}`);
    await input.press("Shift+Enter");
    await input.pressSequentially("line two");
    await input.press("Enter");
    const multi = messageWith(pb, `line one ${suffix}`);
    await multi.waitFor();
    assert.equal(await multi.getByTestId("message-text").textContent(), `line one ${suffix}\nline two`);
    assert.equal(await input.inputValue(), "", "the composer is emptied after sending");

    // Newest at the bottom, in the same order for both.
    const order = async (page) => (await page.getByTestId("message-text").allTextContents()).filter((s) => s.includes(suffix));
    const want = [fromA, fromB, `line one ${suffix}\nline two`];
    await pa.waitForFunction((n) => document.querySelectorAll('[data-testid="message"]').length >= n, want.length);
    assert.deepEqual(await order(pa), want);
    assert.deepEqual(await order(pb), want);
    await assertNotReloaded(pa);
    await assertNotReloaded(pb);
  });

  await step("the keyboard alone reaches the composer, with visible focus", async () => {
    await pb.evaluate(() => document.activeElement?.blur());
    const reached = [];
    for (let i = 0; i < 20; i++) {
      await pb.keyboard.press("Tab");
      const f = await pb.evaluate(() => {
        const el = document.activeElement;
        const cs = el ? getComputedStyle(el) : null;
        return { id: el?.getAttribute("data-testid") ?? el?.tagName, outline: cs ? `${cs.outlineStyle} ${cs.outlineWidth}` : "" };
      });
      reached.push(f.id);
      if (f.id === "BODY") continue; // past the last control, before wrapping round
      assert.notEqual(f.outline.split(" ")[0], "none", `no visible focus on ${f.id}`);
      if (f.id === "composer-input") break;
    }
    assert.equal(reached.at(-1), "composer-input", `Tab went through ${reached.join(", ")}`);
    const text = `typed with the keyboard ${suffix}`;
    await pb.keyboard.type(text);
    await pb.keyboard.press("Enter");
    await messageWith(pa, text).waitFor();
  });

  await step("A renames the chat and B sees the new name live", async () => {
    const newName = `renamed-${suffix}`;
    await pa.getByTestId("edit-chat").click();
    const dialog = pa.getByTestId("edit-chat-dialog");
    await dialog.waitFor();
    await dialog.getByLabel("Name").fill(newName);
    await dialog.getByLabel("Description").fill("New plans");
    await dialog.getByTestId("dialog-submit").click();
    await dialog.waitFor({ state: "detached" });
    await pa.getByTestId("chat-title").filter({ hasText: newName }).waitFor();
    await pb.getByTestId("chat-title").filter({ hasText: newName }).waitFor();
    await pb.getByTestId("chat-description").filter({ hasText: "New plans" }).waitFor();
    await pb.waitForFunction(
      ([id, name]) => document.querySelector(`[data-testid="chat-link"][data-chat-id="${id}"]`)?.textContent?.includes(name),
      [state.chatId, newName],
    );
    assert.equal(await pb.title(), `${newName} · communications`);
    await assertNotReloaded(pb);
    state.chatName = newName;
  });

  await step("B's attempt to edit through the API is refused with 403 not_creator", async () => {
    const res = await pb.evaluate(async (id) => {
      const r = await fetch(`/api/v1/chats/${id}`, {
        method: "PATCH",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: "taken over" }),
      });
      return { status: r.status, body: await r.json() };
    }, state.chatId);
    assert.equal(res.status, 403);
    assert.equal(res.body.error.code, "not_creator");
  });

  await step("a message with markup shows as text, never runs", async () => {
    const watch = () => {
      window.__added = [];
      new MutationObserver((records) => {
        for (const r of records) {
          for (const n of r.addedNodes) {
            if (n.nodeType !== 1) continue;
            if (n.matches("script, img, iframe") || n.querySelector("script, img, iframe")) window.__added.push(n.outerHTML);
          }
        }
      }).observe(document.documentElement, { childList: true, subtree: true });
      return document.scripts.length;
    };
    const scriptsA = await pa.evaluate(watch);
    const scriptsB = await pb.evaluate(watch);
    const evil = `<script>alert(1)</script><img src=x onerror="alert(2)"> ${suffix}`;
    await send(pa, evil);
    for (const [page, scripts] of [[pa, scriptsA], [pb, scriptsB]]) {
      const msg = messageWith(page, `alert(1)`);
      await msg.waitFor();
      assert.equal(await msg.getByTestId("message-text").textContent(), evil);
      assert.equal(await msg.locator("script, img").count(), 0);
      assert.equal(await page.evaluate(() => document.scripts.length), scripts, "a script element was added");
      assert.deepEqual(await page.evaluate(() => window.__added), []);
    }
    assert.deepEqual(a.dialogs, []);
    assert.deepEqual(b.dialogs, []);
  });

  await step("an error from the server is shown to the person", async () => {
    await send(pa, "x".repeat(4001));
    const banner = pa.locator('[data-testid="error"][role="alert"]');
    await banner.filter({ hasText: /\S/ }).waitFor();
    assert.equal(await banner.getAttribute("data-code"), "invalid_message");
    // The refused message itself shows that it failed, and offers Retry.
    const refused = pa.getByTestId("pending-message").filter({ has: pa.locator('[data-testid="message-state"][data-state="failed"]') });
    await refused.waitFor();
    assert.equal(await refused.getAttribute("data-state"), "failed");
    assert.match(await refused.getByTestId("message-state").textContent(), /^Not sent/);
    await refused.getByRole("button", { name: "Retry", exact: true }).waitFor();
    await pa.getByRole("button", { name: "Dismiss the error" }).click();
    await banner.waitFor({ state: "hidden" });
    await pa.getByRole("button", { name: "Dismiss", exact: true }).click();
  });

  await step("screenshots at 1280x800 and 375x667", async () => {
    await pa.screenshot({ path: join(ARTIFACTS, "chat-1280x800.png") });
    await pb.screenshot({ path: join(ARTIFACTS, "chat-375x667.png") });
    assert.deepEqual(await unlabelled(pa), []);
    assert.deepEqual(await unlabelled(pb), []);
    await pb.getByTestId("toggle-chats").click();
    await pb.getByTestId("sidebar").waitFor({ state: "visible" });
    await pb.screenshot({ path: join(ARTIFACTS, "chat-list-375x667.png") });
    await pb.keyboard.press("Escape");
    await pa.getByTestId("edit-chat").click();
    await pa.getByTestId("edit-chat-dialog").waitFor();
    await pa.screenshot({ path: join(ARTIFACTS, "edit-dialog-1280x800.png") });
    assert.deepEqual(await unlabelled(pa), []);
    await pa.keyboard.press("Escape");
    await pa.getByTestId("edit-chat-dialog").waitFor({ state: "detached" });
    // Focus goes back to the button that opened the dialog.
    assert.equal(await pa.evaluate(() => document.activeElement?.getAttribute("data-testid")), "edit-chat");
  });

  // ---- live features: edits and deletions, typing, presence, direct
  // messages, unread counts, infinite scroll ----

  await step("A edits and deletes her message and B sees both live", async () => {
    const original = `edit me ${suffix}`;
    await send(pa, original);
    await messageWith(pb, original).waitFor();
    const mine = messageWith(pa, original);
    await mine.locator('[data-state="sent"]').first().waitFor();
    const seq = await mine.getAttribute("data-seq");
    const onA = pa.locator(`[data-testid="message"][data-seq="${seq}"]`);
    const onB = pb.locator(`[data-testid="message"][data-seq="${seq}"]`);
    // Only one's own messages offer Edit and Delete.
    assert.equal(await onB.getByTestId("edit-message").count(), 0, "B is offered to edit A's message");

    // The keyboard: Up from the list reaches the newest message, Tab its
    // Edit button, Enter opens the editor; Escape leaves it without a
    // change, with focus back on Edit.
    await pa.getByTestId("messages").focus();
    await pa.keyboard.press("ArrowUp");
    assert.equal(await pa.evaluate(() => document.activeElement?.getAttribute("data-seq")), seq);
    await pa.keyboard.press("Tab");
    assert.equal(await pa.evaluate(() => document.activeElement?.getAttribute("data-testid")), "edit-message");
    await pa.keyboard.press("Enter");
    await onA.getByLabel("Edit message").waitFor();
    await pa.keyboard.press("Escape");
    await onA.getByTestId("edit-form").waitFor({ state: "detached" });
    assert.equal(await pa.evaluate(() => document.activeElement?.getAttribute("data-testid")), "edit-message");

    const edited = `edited ${suffix}`;
    await onA.getByTestId("edit-message").click();
    const input = onA.getByLabel("Edit message");
    assert.equal(await input.inputValue(), original);
    await input.fill(edited);
    await input.press("Enter");
    for (const m of [onA, onB]) {
      await m.locator('[data-testid="message-text"]').filter({ hasText: edited }).waitFor();
      await m.getByTestId("message-edited").waitFor({ state: "visible" });
      assert.equal(await m.getAttribute("data-edited"), "true");
    }
    // The edit has a seq of its own but shows as no message.
    assert.equal(await messageWith(pb, original).count(), 0);
    assert.equal(await messageWith(pb, edited).count(), 1);
    await pb.screenshot({ path: join(ARTIFACTS, "edited-375x667.png") });
    // History pages show the message as it is now, and the edit as no message.
    const shownB = await pb.getByTestId("message").count();
    await pb.reload();
    await onB.locator('[data-testid="message-text"]').filter({ hasText: edited }).waitFor();
    await onB.getByTestId("message-edited").waitFor({ state: "visible" });
    assert.equal(await pb.getByTestId("message").count(), shownB, "the reload shows other messages");
    await pb.locator('[data-testid="connection"][data-state="open"]').waitFor();
    await markPage(pb);

    // Delete asks first; Cancel keeps the message.
    await onA.getByTestId("delete-message").click();
    const dialog = pa.getByTestId("delete-dialog");
    await dialog.waitFor();
    assert.equal(await dialog.getByTestId("delete-quote").textContent(), edited);
    await dialog.getByTestId("dialog-cancel").click();
    await dialog.waitFor({ state: "detached" });
    assert.equal(await onA.getAttribute("data-deleted"), null);
    await onA.getByTestId("delete-message").click();
    await dialog.waitFor();
    await dialog.getByTestId("dialog-submit").click();
    await dialog.waitFor({ state: "detached" });
    await pa.locator(`[data-testid="message"][data-seq="${seq}"][data-deleted="true"]`).waitFor();
    await pb.locator(`[data-testid="message"][data-seq="${seq}"][data-deleted="true"]`).waitFor();
    for (const m of [onA, onB]) {
      assert.equal(await m.getByTestId("message-text").textContent(), "message deleted");
      assert.equal(await m.getByTestId("edit-message").count(), 0);
    }
    assert.equal(await messageWith(pb, edited).count(), 0, "the deleted text is still shown");
    await pa.screenshot({ path: join(ARTIFACTS, "deleted-1280x800.png") });
    await assertNotReloaded(pa);
    await assertNotReloaded(pb);
  });

  await step("B's typing shows for A, who views the chat", async () => {
    const typing = pa.getByTestId("typing");
    assert.equal((await typing.textContent()).trim(), "");
    const input = pb.getByTestId("composer-input");
    await input.pressSequentially(`still typing ${suffix}`);
    await typing.filter({ hasText: `${b.username} is typing…` }).waitFor();
    // The message itself ends the indicator.
    await input.press("Enter");
    await messageWith(pa, `still typing ${suffix}`).waitFor();
    await pa.waitForFunction(() => document.querySelector('[data-testid="typing"]')?.textContent === "");
  });

  await step("presence shows who is online and who goes offline", async () => {
    // B views the chat, so A sees B online in it.
    await pa.getByTestId("online-user").filter({ hasText: b.username }).waitFor();
    // Carol, on the other gateway, comes online in "general" and leaves.
    const c = await person(browser, "carol", BASE_B, PHONE);
    await chatLink(pa, 1).click();
    await pa.getByTestId("chat-title").filter({ hasText: "general" }).waitFor();
    await registerAndEnter(c);
    await pa.getByTestId("online-user").filter({ hasText: c.username }).waitFor();
    await c.context.close();
    await pa.getByTestId("online-user").filter({ hasText: c.username }).waitFor({ state: "detached" });
    await pa.getByTestId("online-user").filter({ hasText: b.username }).waitFor();
    assert.deepEqual(c.pageErrors, []);
  });

  await step("presence counts those online that the server counts but does not name", async () => {
    // The server names at most 500 and counts everyone in total. A second
    // tab of A's gets its presence answers with 100 more counted than
    // named, and a change of someone not named, through a routed websocket.
    const pa2 = await a.context.newPage();
    pa2.setDefaultTimeout(WAIT_MS);
    pa2.on("pageerror", (err) => a.pageErrors.push(String(err)));
    const routed = [];
    await pa2.routeWebSocket(/\/ws(\?|$)/, (ws) => {
      const server = ws.connectToServer();
      routed.push(ws);
      server.onMessage((frame) => {
        const lines = String(frame)
          .split("\n")
          .map((line) => {
            if (!line.includes('"type":"presence"')) return line;
            const ev = JSON.parse(line);
            return JSON.stringify({ ...ev, total: ev.total + 100 });
          });
        ws.send(lines.join("\n"));
      });
    });
    await pa2.goto("/chats/1");
    await pa2.locator('[data-testid="connection"][data-state="open"]').waitFor();
    const presence = pa2.getByTestId("presence");
    // A and B are online: B is named, and 100 more are counted.
    await presence.filter({ has: pa2.getByTestId("online-user").filter({ hasText: b.username }) }).filter({ hasText: / and 100 more$/ }).waitFor();
    assert.equal(await presence.getAttribute("data-count"), "101");
    // Someone not named goes offline: one fewer. He comes back: named now.
    const ghost = { type: "presence_changed", chat_id: 1, user_id: 2_000_000_000, username: `ghost_${suffix}` };
    routed.at(-1).send(JSON.stringify({ ...ghost, online: false }));
    await pa2.locator('[data-testid="presence"][data-count="100"]').filter({ hasText: / and 99 more$/ }).waitFor();
    routed.at(-1).send(JSON.stringify({ ...ghost, online: true }));
    await presence.getByTestId("online-user").filter({ hasText: ghost.username }).waitFor();
    await pa2.locator('[data-testid="presence"][data-count="101"]').filter({ hasText: / and 99 more$/ }).waitFor();
    await pa2.close();
  });

  await step("a direct message started by name shows under the other's name for both", async () => {
    await pa.getByTestId("new-direct").click();
    const dialog = pa.getByTestId("direct-dialog");
    await dialog.waitFor();
    assert.equal(await pa.evaluate(() => document.activeElement?.getAttribute("data-testid")), "direct-username-input");
    await dialog.getByLabel("Username").fill(`nobody_${suffix}`);
    await dialog.getByTestId("dialog-submit").click();
    await dialog.locator('[data-testid="dialog-error"][role="alert"]').filter({ hasText: /\S/ }).waitFor();
    await dialog.getByLabel("Username").fill(b.username);
    await dialog.getByTestId("dialog-submit").click();
    await dialog.waitFor({ state: "detached" });
    await pa.waitForURL(/\/chats\/\d+$/);
    state.directId = Number(new URL(pa.url()).pathname.split("/").pop());
    await pa.getByTestId("chat-title").filter({ hasText: b.username }).waitFor();
    await chatLink(pa, state.directId).filter({ hasText: b.username }).waitFor();
    assert.equal(await chatLink(pa, state.directId).getAttribute("data-direct"), "true");
    assert.equal(await pa.getByTestId("edit-chat").isVisible(), false, "a direct chat offers Edit");
    // B's list shows it under A's name, live.
    await pb.getByTestId("toggle-chats").click();
    await chatLink(pb, state.directId).filter({ hasText: a.username }).waitFor();
    await pb.keyboard.press("Escape");
    // Starting it again opens the same chat.
    await pa.getByTestId("new-direct").click();
    await dialog.waitFor();
    await dialog.getByLabel("Username").fill(b.username.toUpperCase());
    await dialog.getByTestId("dialog-submit").click();
    await dialog.waitFor({ state: "detached" });
    await pa.waitForURL(new RegExp(`/chats/${state.directId}$`));
    await pa.screenshot({ path: join(ARTIFACTS, "direct-1280x800.png") });
  });

  await step("B's unread count shows, and clears when he reads, on his second tab too", async () => {
    // B views the team chat; A writes twice in the direct chat.
    await send(pa, `unread one ${suffix}`);
    await send(pa, `unread two ${suffix}`);
    await messageWith(pa, `unread two ${suffix}`).locator('[data-state="sent"]').first().waitFor();
    const badge = (page) => chatLink(page, state.directId).getByTestId("unread-count");
    await pb.getByTestId("toggle-chats").click();
    await badge(pb).filter({ hasText: /^2$/ }).waitFor();
    // B's second tab gets the count from the chat list.
    const pb2 = await b.context.newPage();
    pb2.setDefaultTimeout(WAIT_MS);
    pb2.on("pageerror", (err) => b.pageErrors.push(String(err)));
    await pb2.goto("/chats/1");
    await pb2.locator('[data-testid="connection"][data-state="open"]').waitFor();
    await pb2.getByTestId("toggle-chats").click();
    await badge(pb2).filter({ hasText: /^2$/ }).waitFor();
    await pb.screenshot({ path: join(ARTIFACTS, "unread-375x667.png") });
    // B reads the chat on the first tab: the counts go on both.
    await chatLink(pb, state.directId).click();
    await pb.getByTestId("chat-title").filter({ hasText: a.username }).waitFor();
    await messageWith(pb, `unread two ${suffix}`).waitFor();
    await badge(pb2).waitFor({ state: "detached" });
    await pb.getByTestId("toggle-chats").click();
    assert.equal(await badge(pb).count(), 0);
    await pb.keyboard.press("Escape");
    // A new list agrees: the read position is stored.
    await pb2.reload();
    await pb2.locator('[data-testid="connection"][data-state="open"]').waitFor();
    await pb2.getByTestId("toggle-chats").click();
    await chatLink(pb2, state.directId).waitFor();
    assert.equal(await badge(pb2).count(), 0);
    await pb2.close();
  });

  await step("a chat left the moment a message arrived is read, here and on the server", async () => {
    // B views the direct chat at its newest message. The moment A's next
    // message shows, before the read position's half-second wait is over,
    // B goes to general: the read goes out at once.
    const text = `seen in passing ${suffix}`;
    await pb.evaluate((text) => {
      const list = document.querySelector('[data-testid="message-list"]');
      const seen = () => [...list.querySelectorAll('[data-testid="message-text"]')].some((el) => el.textContent === text);
      const leave = () => document.querySelector('[data-testid="chat-link"][data-chat-id="1"]').click();
      new MutationObserver((_, obs) => {
        if (!seen()) return;
        obs.disconnect();
        leave();
      }).observe(list, { childList: true, subtree: true });
    }, text);
    await send(pa, text);
    await pb.waitForURL(/\/chats\/1$/);
    await pb.getByTestId("chat-title").filter({ hasText: "general" }).waitFor();
    await serverUnread(pb, state.directId, 0);
    await pb.getByTestId("toggle-chats").click();
    await chatLink(pb, state.directId).waitFor();
    assert.equal(await chatLink(pb, state.directId).getByTestId("unread-count").count(), 0);
    await pb.keyboard.press("Escape");
  });

  await step("older messages load on scrolling up, with the view kept in place", async () => {
    // A chat with more than two pages of history, seeded over a websocket of A's.
    const created = await pa.evaluate(async (body) => {
      const r = await fetch("/api/v1/chats", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      return { status: r.status, body: await r.json() };
    }, { name: `history-${suffix}`, description: "", members: [b.username] });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = created.body.chat.id;
    state.historyId = id;
    const total = 105;
    assert.equal(await seed(pa, id, total, `old ${suffix}`), total);

    // B, elsewhere, sees the capped count.
    await pb.getByTestId("toggle-chats").click();
    await chatLink(pb, id).getByTestId("unread-count").filter({ hasText: "99+" }).waitFor();
    await pb.keyboard.press("Escape");

    await chatLink(pa, id).click();
    await pa.getByTestId("chat-title").filter({ hasText: `history-${suffix}` }).waitFor();
    const seqAt = (s) => pa.locator(`[data-testid="message"][data-seq="${s}"]`);
    await seqAt(total).waitFor();
    assert.equal(await seqAt(1).count(), 0, "the first page holds everything");
    const firstShown = Number(await pa.getByTestId("message").first().getAttribute("data-seq"));
    assert.ok(firstShown > 1);
    // Scroll to the top: the page before loads by itself, and the message
    // that was at the top stays where it was.
    const topOf = (s) =>
      pa.evaluate((sel) => {
        const list = document.querySelector('[data-testid="messages"]');
        return document.querySelector(sel).getBoundingClientRect().top - list.getBoundingClientRect().top;
      }, `[data-testid="message"][data-seq="${s}"]`);
    await pa.getByTestId("messages").evaluate((el) => {
      el.scrollTop = 0;
    });
    const before = await topOf(firstShown);
    await seqAt(firstShown - 1).waitFor({ state: "attached" });
    await pa.waitForFunction(() => document.querySelector('[data-testid="messages"] .older-status')?.textContent === "");
    const after = await topOf(firstShown);
    assert.ok(Math.abs(after - before) < 60, `the view jumped from ${before} to ${after} px`);
    assert.ok((await pa.getByTestId("messages").evaluate((el) => el.scrollTop)) > 0, "the view stayed at the top");
    // Once more up to the first message.
    await pa.getByTestId("messages").evaluate((el) => {
      el.scrollTop = 0;
    });
    await seqAt(1).waitFor({ state: "attached" });
    await pa.getByTestId("load-older").waitFor({ state: "hidden" });
    const seqs = (await pa.getByTestId("message").evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-seq")))));
    assert.deepEqual(seqs, Array.from({ length: total }, (_, i) => i + 1), "every message once, in order");
    await pa.screenshot({ path: join(ARTIFACTS, "history-1280x800.png") });
    assert.deepEqual(await unlabelled(pa), []);
    assert.deepEqual(await unlabelled(pb), []);
  });

  await step("a chat left scrolled up keeps its unread count, as the server does", async () => {
    const id = state.historyId;
    // B reads the chat to its newest message.
    await pb.getByTestId("toggle-chats").click();
    await chatLink(pb, id).click();
    await pb.getByTestId("chat-title").filter({ hasText: `history-${suffix}` }).waitFor();
    await pb.locator('[data-testid="message"][data-seq="105"]').waitFor();
    await serverUnread(pb, id, 0);
    // Scrolled up, B does not see A's new message arrive; then B leaves.
    await pb.getByTestId("messages").evaluate((el) => {
      el.scrollTop = 0;
    });
    assert.equal(await seed(pa, id, 1, `unseen ${suffix}`), 1);
    await pb.locator('[data-testid="message"][data-seq="106"]').waitFor({ state: "attached" });
    await pb.getByTestId("jump-to-latest").waitFor();
    await pb.getByTestId("toggle-chats").click();
    await chatLink(pb, 1).click();
    await pb.getByTestId("chat-title").filter({ hasText: "general" }).waitFor();
    await pb.getByTestId("toggle-chats").click();
    await chatLink(pb, id).getByTestId("unread-count").filter({ hasText: /^1$/ }).waitFor();
    await pb.keyboard.press("Escape");
    await serverUnread(pb, id, 1);
  });

  await step("a flood of sends is rate limited with a clear notice, and the app recovers", async () => {
    // 100 sends in one go, faster than anyone types: the connection's
    // bucket refuses the rest with rate_limited, and enough refusals close
    // it with 4003, after which the app reconnects and resumes.
    //
    // The gateway takes a token as it reads each send and reads the next
    // only after answering the last, so on a machine so loaded that a send
    // takes over 30 ms the bucket refills as fast as the flood drains and
    // nothing is refused (the limit held all the same). Such a flood is
    // answered in full: then another, at most three.
    const banner = pa.locator('[data-testid="error"][role="alert"][data-code="rate_limited"]');
    const notice = banner.filter({ hasText: /too fast/ });
    let limited = false;
    for (let attempt = 1; attempt <= 3 && !limited; attempt++) {
      const flood = `flood ${suffix} ${attempt}`;
      await pa.evaluate((text) => {
        const input = document.querySelector('[data-testid="composer-input"]');
        const form = document.querySelector('[data-testid="composer"]');
        for (let i = 0; i < 100; i++) {
          input.value = `${text} ${i}`;
          form.requestSubmit();
        }
      }, flood);
      // Every send of this flood shown as sent (acknowledged or stored).
      const allSent = pa.waitForFunction(
        (text) => {
          const items = [...document.querySelectorAll('[data-testid="message"], [data-testid="pending-message"]')].filter((li) =>
            li.textContent.includes(`${text} `),
          );
          return items.length === 100 && items.every((li) => li.dataset.state === "sent");
        },
        flood,
        { timeout: 120_000 },
      );
      limited = await Promise.race([
        notice.waitFor({ timeout: 120_000 }).then(
          () => true,
          () => false,
        ),
        allSent.then(
          () => false,
          () => false,
        ),
      ]);
      if (!limited) console.log(`flood ${attempt}: every send answered, none refused (a slow machine); flooding again`);
    }
    assert.ok(limited, "three floods of 100 sends, none refused with a rate_limited notice");
    const refused = pa.getByTestId("pending-message").filter({ has: pa.locator('[data-testid="message-state"][data-state="failed"]') });
    await refused.first().waitFor();
    assert.match(await refused.first().getByTestId("message-state").textContent(), /too fast/);
    // Connected again (after a 4003 close, at least 4 s later), a retry goes through.
    await pa.locator('[data-testid="connection"][data-state="open"]').waitFor();
    const retried = await refused.first().getAttribute("data-client-msg-id");
    await refused.first().getByRole("button", { name: "Retry", exact: true }).click();
    await pa.locator(`[data-testid="pending-message"][data-client-msg-id="${retried}"]`).waitFor({ state: "detached" });
    await pa.getByRole("button", { name: "Dismiss the error" }).click();
  });

  await step("sends queued while disconnected go out paced after the reconnect, none refused", async () => {
    // A's third tab, on a websocket routed through the test: held, a
    // reconnect gets no hello, so the app queues what A sends meanwhile.
    const pa3 = await a.context.newPage();
    pa3.setDefaultTimeout(WAIT_MS);
    pa3.on("pageerror", (err) => a.pageErrors.push(String(err)));
    let hold = false;
    const sockets = [];
    await pa3.routeWebSocket(/\/ws(\?|$)/, (ws) => {
      sockets.push(ws);
      if (!hold) ws.connectToServer();
    });
    await pa3.goto(`/chats/${state.historyId}`);
    await pa3.locator('[data-testid="connection"][data-state="open"]').waitFor();
    hold = true;
    sockets.at(-1).close({ code: 4000 });
    await pa3.locator('[data-testid="connection"][data-state="open"]').waitFor({ state: "detached" });
    // Far more than the connection's burst of 40 (which it also spends on
    // view and read), sent while it is down.
    const n = 100;
    const text = `queued ${suffix}`;
    await pa3.evaluate(
      ({ text, n }) => {
        const input = document.querySelector('[data-testid="composer-input"]');
        const form = document.querySelector('[data-testid="composer"]');
        for (let i = 1; i <= n; i++) {
          input.value = `${text} ${i}`;
          form.requestSubmit();
        }
      },
      { text, n },
    );
    assert.equal(await pa3.getByTestId("pending-message").count(), n);
    // Let the next connection through: the outbox drains below the rate limit.
    // (A connection held already is closed; the app's next one goes through.)
    hold = false;
    if (sockets.length > 1) sockets.at(-1).close({ code: 4000 });
    await pa3.locator('[data-testid="connection"][data-state="open"]').waitFor();
    // About 14 a second: 100 take some 7 s.
    await pa3.waitForFunction(() => document.querySelectorAll('[data-testid="pending-message"]').length === 0, undefined, { timeout: 2 * WAIT_MS });
    const stored = await pa3.getByTestId("message-text").evaluateAll((els, text) => els.filter((e) => e.textContent.startsWith(text)).map((e) => e.textContent), text);
    assert.deepEqual(stored, Array.from({ length: n }, (_, i) => `${text} ${i + 1}`), "every queued message once, in order");
    assert.equal(await pa3.locator('[data-testid="error"][data-code="rate_limited"]').count(), 0);
    await pa3.close();
  });

  await step("a chat B is not in is refused", async () => {
    const other = await pa.evaluate(async (name) => {
      const r = await fetch("/api/v1/chats", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name, description: "", members: [] }),
      });
      return { status: r.status, body: await r.json() };
    }, `private-${suffix}`);
    assert.equal(other.status, 201, JSON.stringify(other.body));
    await pb.goto(`/chats/${other.body.chat.id}`);
    await pb.getByTestId("not-member").waitFor();
    await pb.locator('[data-testid="not-member"] [role="alert"]').filter({ hasText: /\S/ }).waitFor();
    assert.equal(await pb.getByTestId("composer").count(), 0);
  });

  await step("an unknown chat and an unknown page show the 404 page", async () => {
    await pb.goto("/chats/999999999");
    await pb.getByTestId("not-found").waitFor();
    await pb.screenshot({ path: join(ARTIFACTS, "not-found-375x667.png") });
    await pa.goto("/no/such/page");
    await pa.getByTestId("not-found").waitFor();
    await pa.getByTestId("go-home").click();
    await pa.waitForURL(/\/chats\/1$/);
    await pa.getByTestId("chat-title").filter({ hasText: "general" }).waitFor();
  });

  await step("A logs out and the session is over", async () => {
    await pa.getByTestId("logout").click();
    await pa.waitForURL(/\/login$/);
    await pa.getByTestId("login-form").waitFor();
    await pa.screenshot({ path: join(ARTIFACTS, "login-1280x800.png") });
    const me = await pa.evaluate(async () => (await fetch("/api/v1/me", { credentials: "same-origin" })).status);
    assert.equal(me, 401);
    await pa.goto("/chats/1");
    await pa.waitForURL(/\/login$/);
    await pa.getByTestId("login-form").waitFor();
  });

  await step("nothing went wrong behind the scenes", async () => {
    for (const p of [a, b]) {
      assert.deepEqual(p.pageErrors, [], `${p.name}: uncaught errors`);
      assert.deepEqual(p.dialogs, [], `${p.name}: dialogs`);
      assert.deepEqual(p.foreign, [], `${p.name}: requests to another origin`);
    }
    // The token is never kept where scripts can read it.
    for (const p of [b]) {
      const stored = await p.page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
      assert.equal(stored, "{}{}", `${p.name}: something readable by scripts holds session data`);
    }
  });
});
