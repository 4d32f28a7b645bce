// Talking to the server: the page's settings, the key of an --api-key server, and streamed chat
// completions read as server-sent events. (Served to the login page too: it keeps the key here.)
const KEY = "mistralrs.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY);
}

export function rememberKey(key) {
  localStorage.setItem(KEY, key);
}

/** Forget the key and the session cookie, then show the login page. */
export async function logOut() {
  localStorage.removeItem(KEY);
  try {
    await fetch("/ui/session", { method: "DELETE" });
  } finally {
    location.reload();
  }
}

export async function pageConfig() {
  const response = await fetch("/ui/config.json", { cache: "no-store" });
  if (response.status === 401) {
    await logOut();
  }
  return response.json();
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

export class ApiError extends Error {}

/**
 * POST a streamed chat completion and call `onChunk` with each parsed chunk.
 * Resolves when the stream ends ([DONE]); rejects with ApiError for an error answer or an error
 * event, and with the AbortError when `signal` aborts (the server then frees the sequence).
 */
export async function streamChat(body, signal, onChunk) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(), body: JSON.stringify({ ...body, stream: true }), signal,
  });
  if (response.status === 401 && apiKey()) {
    await logOut();
  }
  if (!response.ok) {
    let message = `the server answered ${response.status}`;
    try {
      message = (await response.json()).error.message;
    } catch { /* not our JSON error body: keep the status */ }
    throw new ApiError(message);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error.message);
        onChunk(chunk);
      }
    }
  }
}
