// The login page of an --api-key server: check the key once, keep it, and let the server set
// the cookie that unlocks the chat page. The key itself goes only in Authorization headers.
import { rememberKey } from "./api.js";

const form = document.getElementById("login");
const input = document.getElementById("api-key");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const key = input.value.trim();
  let response;
  try {
    response = await fetch("/ui/session", { method: "POST", headers: { Authorization: `Bearer ${key}` } });
  } catch {
    error.textContent = "The server cannot be reached.";
    return;
  }
  if (response.status === 204) {
    rememberKey(key);
    location.reload();
  } else if (response.status === 401) {
    error.textContent = "That is not this server's API key.";
    input.select();
  } else {
    error.textContent = `The server answered ${response.status}.`;
  }
});
