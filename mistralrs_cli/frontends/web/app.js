// The chat page: conversations on the left, the open one in the middle, streamed answers from
// /v1/chat/completions rendered as safe Markdown, with tokens/s and time to first token.
import { ApiError, apiKey, logOut, pageConfig, streamChat } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { renderMixture } from "./mixture.js";
import { Store, loadSettings, saveSettings } from "./store.js";

const $ = (id) => document.getElementById(id);
const store = new Store();
const settings = loadSettings();
let config = { status: "loading", adapters: [] };
let run = null; // the answer being generated: {controller, conversation, message}

// --- settings --------------------------------------------------------------------------------
function bindSettings() {
  const fields = [
    [$("system-prompt"), "system", (el) => el.value],
    [$("temperature"), "temperature", (el) => Number(el.value)],
    [$("max-tokens"), "maxTokens", (el) => (el.value.trim() ? Math.max(1, Math.round(Number(el.value) || 1)) : null)],
    [$("show-mixture"), "showMixture", (el) => el.checked],
  ];
  for (const [el, name, read] of fields) {
    if (el.type === "checkbox") el.checked = settings[name];
    else el.value = settings[name] ?? "";
    for (const kind of ["input", "change"]) {
      el.addEventListener(kind, () => {
        settings[name] = read(el);
        saveSettings(settings);
      });
    }
  }
}

// --- the conversation list -------------------------------------------------------------------
function renderSidebar() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of store.conversations) {
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conversation";
    open.textContent = conversation.title;
    if (conversation.id === store.currentId) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => switchTo(conversation.id));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "quiet delete";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Delete conversation: ${conversation.title}`);
    remove.addEventListener("click", () => {
      if (run && run.conversation === conversation) stop();
      store.remove(conversation.id);
      renderAll();
    });
    li.append(open, remove);
    list.appendChild(li);
  }
}

function switchTo(id) {
  if (run) stop();
  document.body.classList.remove("show-sidebar");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
  store.select(id);
  renderAll();
  $("prompt").focus();
}

// --- messages --------------------------------------------------------------------------------
function renderMessages() {
  const section = $("messages");
  section.replaceChildren();
  const conversation = store.current();
  if (!conversation || conversation.messages.length === 0) {
    const hello = document.createElement("p");
    hello.className = "empty";
    hello.textContent = config.status === "ok" ? `Chat with ${config.model}.` : "The model is loading…";
    section.appendChild(hello);
    return;
  }
  let view;
  conversation.messages.forEach((message, i) => {
    view = messageView(message, i === conversation.messages.length - 1);
    section.appendChild(view.node);
  });
  section.scrollTop = section.scrollHeight;
  return view; // the last message's, which a streaming answer refreshes
}

/** The article of one message, and functions to refresh its parts while it streams. */
function messageView(message, last) {
  const node = document.createElement("article");
  node.className = `message ${message.role}`;
  node.dataset.role = message.role;
  const who = document.createElement("h2");
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : "Assistant";
  const content = document.createElement("div");
  content.className = "content";
  const mixture = document.createElement("div");
  mixture.className = "mixture";
  const footer = document.createElement("footer");
  node.append(who, content, mixture, footer);
  const view = {
    node,
    content() {
      if (message.role === "user") content.textContent = message.content;
      else renderMarkdown(message.content, content);
    },
    footer() {
      node.dataset.state = message.state ?? "done";
      node.setAttribute("aria-busy", String(message.state === "streaming"));
      footer.replaceChildren(...footerParts(message, last));
      if (message.mixture && settings.showMixture) renderMixture(message.mixture, mixture);
      else mixture.replaceChildren();
    },
  };
  view.content();
  view.footer();
  return view;
}

function footerParts(message, last) {
  const parts = [];
  if (message.role !== "assistant") return parts;
  if (message.state === "streaming") {
    parts.push(note("generating…", "stats"));
    return parts;
  }
  if (message.stats && (message.stats.tokens || !message.error)) parts.push(note(statsText(message.stats), "stats"));
  if (message.state === "stopped") parts.push(note("stopped", "badge"));
  if (message.error) {
    const error = note(message.error, "error");
    error.setAttribute("role", "alert");
    parts.push(error);
  }
  parts.push(button("Copy", "Copy this answer", async (b) => {
    await copy(message.content);
    b.textContent = "Copied";
    setTimeout(() => { b.textContent = "Copy"; }, 1500);
  }));
  if (last) parts.push(button("Regenerate", "Answer the last message again", () => regenerate()));
  return parts;
}

function statsText(stats) {
  const bits = [`${stats.tokens} token${stats.tokens === 1 ? "" : "s"}`];
  if (stats.tokensPerSecond) bits.push(`${stats.tokensPerSecond.toFixed(1)} tok/s`);
  if (stats.ttft !== undefined) bits.push(`TTFT ${(stats.ttft / 1000).toFixed(2)} s`);
  return bits.join(" · ");
}

function note(text, className) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

function button(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "quiet";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", () => onClick(b));
  return b;
}

async function copy(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain http beyond localhost has no clipboard API: the old way still works there.
  const area = document.createElement("textarea");
  area.value = text;
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

// --- generating ------------------------------------------------------------------------------
function requestBody(conversation) {
  const messages = [];
  if (settings.system.trim()) messages.push({ role: "system", content: settings.system });
  for (const m of conversation.messages) {
    if (m.role === "assistant" && (m.error || m.state === "streaming")) continue;
    messages.push({ role: m.role, content: m.content });
  }
  const body = { messages, temperature: settings.temperature, stream_options: { include_usage: true } };
  if (settings.maxTokens) body.max_tokens = settings.maxTokens; // none: the answer may run to the context's end
  if (settings.showMixture && config.adapters.length) {
    body.xlora_scalings = true;
    body.logprobs = true; // each token's text, to colour it
  }
  return body;
}

async function generate(conversation) {
  const body = requestBody(conversation);
  const message = { role: "assistant", content: "", state: "streaming" };
  conversation.messages.push(message);
  store.touch(conversation);
  renderSidebar();
  const view = renderMessages();
  run = { controller: new AbortController(), conversation, message };
  showRunning(true);
  const started = performance.now();
  let first;
  let counted = 0;
  let usage = null;
  const pieces = [];
  let frame = 0;
  let saved = performance.now();
  const redraw = () => {
    frame = 0;
    if (performance.now() - saved > 1000) {
      store.save(); // a reload mid-answer keeps what had come
      saved = performance.now();
    }
    const section = $("messages");
    const atBottom = section.scrollHeight - section.scrollTop - section.clientHeight < 80;
    view.content();
    if (atBottom) section.scrollTop = section.scrollHeight;
  };
  try {
    await streamChat(body, run.controller.signal, (chunk) => {
      if (chunk.usage) usage = chunk.usage;
      if (chunk.xlora_scalings?.length) {
        const s = chunk.xlora_scalings[0];
        message.mixture = { adapters: s.adapters, scalings: s.scalings, pieces };
      }
      const choice = chunk.choices?.[0];
      if (!choice) return;
      for (const lp of choice.logprobs?.content ?? []) pieces.push(lp.token);
      const text = choice.delta?.content;
      if (text) {
        first ??= performance.now();
        counted++;
        message.content += text;
        frame ||= requestAnimationFrame(redraw);
      }
    });
    message.state = "done";
  } catch (e) {
    if (e.name === "AbortError") {
      message.state = "stopped";
    } else {
      message.state = "error";
      message.error = e instanceof ApiError ? e.message : `the request failed: ${e.message}`;
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    const ended = performance.now();
    const tokens = usage?.completion_tokens ?? counted;
    message.stats = { tokens };
    if (first !== undefined) {
      message.stats.ttft = first - started;
      if (tokens > 1 && ended > first) message.stats.tokensPerSecond = ((tokens - 1) * 1000) / (ended - first);
    }
    run = null;
    showRunning(false);
    store.touch(conversation);
    if (store.current() === conversation) renderMessages(); // its figures, and Regenerate under it
    $("announcer").textContent = { done: "Answer finished.", stopped: "Stopped." }[message.state] ?? "The answer failed.";
  }
}

function showRunning(running) {
  const stopHadFocus = document.activeElement === $("stop");
  $("send").hidden = running;
  $("stop").hidden = !running;
  if (stopHadFocus) $("prompt").focus(); // keyboard users stay where they type
}

function stop() {
  run?.controller.abort(); // the server sees the client leave and frees the sequence
}

function send(text) {
  if (run || !text.trim() || config.status !== "ok") return;
  const conversation = store.open();
  conversation.messages.push({ role: "user", content: text });
  $("prompt").value = "";
  generate(conversation);
}

function regenerate() {
  const conversation = store.current();
  if (run || !conversation) return;
  while (conversation.messages.length && conversation.messages.at(-1).role === "assistant") conversation.messages.pop();
  if (conversation.messages.length) generate(conversation);
}

function renderAll() {
  renderSidebar();
  renderMessages();
}

// --- start -----------------------------------------------------------------------------------
async function waitForModel() {
  for (;;) {
    try {
      config = await pageConfig();
    } catch {
      config = { status: "unreachable", adapters: [] };
    }
    if (config.auth && !apiKey()) {
      await logOut(); // the cookie without the key (storage cleared): ask for the key again
      return;
    }
    $("log-out").hidden = !config.auth;
    const status = $("server-status");
    $("model-name").textContent = config.model ?? "mistralrs";
    $("send").disabled = config.status !== "ok";
    if (config.status === "ok") {
      status.textContent = "";
      document.title = `${config.model} · mistralrs`;
      $("mixture-row").hidden = !(config.adapters ?? []).length;
      if (config.max_model_len) $("max-tokens").max = config.max_model_len;
      config.adapters ??= [];
      renderAll();
      return;
    }
    if (config.status === "failed") {
      status.textContent = "The model failed to load (see the server's log).";
      return;
    }
    status.textContent = config.status === "unreachable" ? "The server cannot be reached…" : "Loading the model…";
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function bindControls() {
  const prompt = $("prompt");
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send(prompt.value);
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send(prompt.value);
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (run) {
      event.preventDefault();
      stop();
    } else if ($("settings").open) {
      $("settings").open = false;
      prompt.focus();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", () => switchTo(null));
  $("show-mixture").addEventListener("change", () => {
    if (!run) renderMessages(); // (a running answer would lose its view; it shows the setting when it ends)
  });
  $("toggle-sidebar").addEventListener("click", (event) => {
    const open = document.body.classList.toggle("show-sidebar");
    event.currentTarget.setAttribute("aria-expanded", String(open));
  });
  $("log-out").addEventListener("click", () => logOut());
}

bindSettings();
bindControls();
renderAll();
waitForModel();
