// Conversations and settings, kept in the browser's localStorage (nothing is stored on the server).
const CONVERSATIONS = "mistralrs.conversations";
const CURRENT = "mistralrs.current";
const SETTINGS = "mistralrs.settings";

export const DEFAULT_SETTINGS = { system: "", temperature: 0.7, maxTokens: null, showMixture: false };

// Not crypto.randomUUID: a page served over plain http beyond localhost is not a secure context.
function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback; // unreadable (edited by hand, another version): start afresh
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (e) {
    console.warn("mistralrs: could not save to localStorage", e); // full: the page goes on working
  }
}

export function loadSettings() {
  return { ...DEFAULT_SETTINGS, ...read(SETTINGS, {}) };
}

export function saveSettings(settings) {
  write(SETTINGS, settings);
}

/** Conversations, newest first: {id, title, updated, messages: [{role, content, ...}]}. */
export class Store {
  constructor() {
    const saved = read(CONVERSATIONS, []);
    this.conversations = Array.isArray(saved) ? saved.filter((c) => c && Array.isArray(c.messages)) : [];
    // An answer that was streaming when the page went away was cut off there.
    for (const m of this.conversations.flatMap((c) => c.messages)) if (m.state === "streaming") m.state = "stopped";
    this.currentId = localStorage.getItem(CURRENT);
    if (!this.current()) this.currentId = null;
  }

  current() {
    return this.conversations.find((c) => c.id === this.currentId) ?? null;
  }

  /** The open conversation, made (and listed) on first use. */
  open() {
    let conversation = this.current();
    if (!conversation) {
      conversation = { id: newId(), title: "New chat", updated: Date.now(), messages: [] };
      this.conversations.unshift(conversation);
      this.select(conversation.id);
    }
    return conversation;
  }

  select(id) {
    this.currentId = id;
    if (id) localStorage.setItem(CURRENT, id);
    else localStorage.removeItem(CURRENT);
  }

  remove(id) {
    this.conversations = this.conversations.filter((c) => c.id !== id);
    if (this.currentId === id) this.select(null);
    this.save();
  }

  touch(conversation) {
    conversation.updated = Date.now();
    const first = conversation.messages.find((m) => m.role === "user");
    if (first && conversation.title === "New chat") conversation.title = first.content.slice(0, 60);
    this.conversations.sort((a, b) => b.updated - a.updated);
    this.save();
  }

  save() {
    write(CONVERSATIONS, this.conversations);
  }
}
