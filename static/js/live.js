// Hangar live updates: one websocket per page. Server events are hints ("this
// deployment's instances changed"); elements that declare interest re-fetch
// their server-rendered partial with htmx. On reconnect everything re-syncs.
// The server's hub also says when its channel layer (Redis) is unreachable
// ("live.interrupted": events are being lost, the page says Reconnecting…) and
// when it is back ("live.resumed": everything re-syncs, the page says Live).
(function () {
  "use strict";
  const status = document.getElementById("live-status");
  let socket = null;
  let attempt = 0;
  let everConnected = false;
  const pending = new Map();

  function setStatus(state, text) {
    if (!status) return;
    status.dataset.state = state;
    status.textContent = text;
  }

  function wanted(element, message) {
    const events = (element.dataset.liveEvents || "").split(/\s+/);
    if (!events.includes(message.event) && !events.includes("*")) return false;
    const scope = element.dataset.liveDeployment;
    return !scope || message.deployment_id === null || String(message.deployment_id) === scope;
  }

  // At most one request in flight per element; a change during it queues one more.
  function refresh(element) {
    if (pending.get(element) === "busy") { pending.set(element, "again"); return; }
    pending.set(element, "busy");
    window.htmx.trigger(element, "live");
  }

  document.addEventListener("htmx:afterRequest", (event) => {
    const element = event.detail.elt;
    const state = pending.get(element);
    if (state === undefined) return;
    pending.delete(element);
    const replacement = element.id && document.getElementById(element.id);
    if (state === "again" && replacement) setTimeout(() => refresh(replacement), 250);
  });

  // Re-sync everything (after a reconnect or a resume): the partials, and
  // whatever listens for "hangar:resync" (the deployment page's charts).
  function refreshAll() {
    document.querySelectorAll("[data-live-events]").forEach(refresh);
    document.dispatchEvent(new CustomEvent("hangar:resync"));
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws/events/`);
    socket.onopen = () => {
      setStatus("live", "Live");
      if (everConnected || attempt > 0) refreshAll();  // re-sync what we missed
      everConnected = true;
      attempt = 0;
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.event === "live.interrupted") {
        setStatus("reconnecting", "Reconnecting…");
        return;
      }
      if (message.event === "live.resumed") {
        setStatus("live", "Live");
        refreshAll();
        return;
      }
      document.dispatchEvent(new CustomEvent("hangar:event", { detail: message }));
      document.querySelectorAll("[data-live-events]").forEach((element) => {
        if (wanted(element, message)) refresh(element);
      });
    };
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4403) {
        setStatus("offline", "Signed out");
        return;
      }
      attempt += 1;
      const delay = Math.min(500 * 2 ** (attempt - 1), 5000);
      setStatus("reconnecting", `Reconnecting…`);
      setTimeout(connect, delay);
    };
  }

  window.hangarLive = { connect, get socket() { return socket; } };
  if (document.querySelector("[data-live-events]")) connect();
})();

// Dangerous actions: the submit button stays disabled until the name is typed.
document.addEventListener("input", (event) => {
  const input = event.target.closest("[data-confirm-name]");
  if (!input) return;
  const form = input.closest("form");
  const ok = input.value === input.dataset.confirmName;
  form.querySelectorAll("[data-confirm-submit]").forEach((b) => { b.disabled = !ok; });
});
document.addEventListener("click", (event) => {
  const opener = event.target.closest("[data-open-dialog]");
  if (opener) document.getElementById(opener.dataset.openDialog).showModal();
  const closer = event.target.closest("[data-close-dialog]");
  if (closer) closer.closest("dialog").close();
});
