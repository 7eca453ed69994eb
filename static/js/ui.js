// Hangar UI: what every page needs, once.
//
// Errors: htmx swaps 2xx answers and 422 (a form re-rendered with its errors,
// see the htmx-config meta tag in base.html). Every other failure (403, 404,
// 409, 5xx, the server unreachable) shows the toast instead of doing nothing.
// Slugs: a field marked data-slug-from="<name>" follows that field, slugified,
// until the user types into it.
(function () {
  "use strict";

  const REASONS = {
    400: "The request was refused as malformed.",
    403: "You do not have permission to do that.",
    404: "Not found: it may have been deleted, or it is not yours.",
    409: "Conflict: this was changed in the meantime. Reload the page and try again.",
    413: "That is too large for the server.",
    429: "Too many requests: wait a moment and try again.",
  };

  function toast(text) {
    const box = document.getElementById("toast");
    if (!box) { window.alert(text); return; }
    box.querySelector("[data-toast-text]").textContent = text;
    box.hidden = false;
  }

  // A short server-side reason: {"detail": …} JSON, plain text, or the
  // [data-error-detail] element of an HTML error page (templates/403.html).
  function detailOf(xhr) {
    const type = xhr.getResponseHeader("Content-Type") || "";
    const body = xhr.responseText || "";
    try {
      if (type.includes("json")) {
        const detail = JSON.parse(body).detail;
        return typeof detail === "string" ? detail : JSON.stringify(detail);
      }
      if (type.includes("text/plain")) return body.trim().slice(0, 300);
      if (type.includes("html")) {
        const found = new DOMParser().parseFromString(body, "text/html")
          .querySelector("[data-error-detail]");
        return found ? found.textContent.trim().slice(0, 300) : "";
      }
    } catch (_) { /* an unreadable body: the status says enough */ }
    return "";
  }

  document.addEventListener("htmx:responseError", (event) => {
    const status = event.detail.xhr.status;
    const reason = REASONS[status] || (status >= 500
      ? `The server failed (${status}). Try again; if it keeps failing, the server log says why.`
      : `The request was refused (${status}).`);
    const detail = detailOf(event.detail.xhr);
    toast(detail && !reason.includes(detail) ? `${reason} ${detail}` : reason);
  });
  document.addEventListener("htmx:sendError", () => {
    toast("Cannot reach the server: the request may not have arrived. " +
          "Check the connection and try again.");
  });
  document.addEventListener("htmx:timeout", () => {
    toast("The server did not answer in time. Reload to see whether the change was made.");
  });
  document.addEventListener("click", (event) => {
    if (event.target.closest("[data-toast-close]")) document.getElementById("toast").hidden = true;
  });

  function slugify(text) {
    return text.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase()
      .replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63).replace(/-+$/, "");
  }
  function followers(form, name) {
    return form ? form.querySelectorAll(`[data-slug-from="${name}"]`) : [];
  }
  document.addEventListener("input", (event) => {
    const field = event.target;
    if (field.dataset && field.dataset.slugFrom) {  // typed into the slug itself
      field.dataset.suggested = field.value === "" ? "" : "\u0000user";
      return;
    }
    followers(field.form, field.name).forEach((slug) => {
      adoptOne(slug);  // typed into before htmx:load adopted the re-rendered form
      if (slug.value === "" || slug.value === slug.dataset.suggested) {
        slug.value = slugify(field.value);
        slug.dataset.suggested = slug.value;
      }
    });
  });
  // A form re-rendered by the server: a slug equal to its name's suggestion
  // still follows the name. Judged on what the server rendered (the fields'
  // default values), once per field, so typing into the name between the swap
  // and htmx:load changes nothing.
  function adoptOne(slug) {
    if (slug.dataset.suggested !== undefined) return;
    const source = slug.form && slug.form.elements[slug.dataset.slugFrom];
    if (source && (slug.defaultValue === "" ||
                   slug.defaultValue === slugify(source.defaultValue))) {
      slug.dataset.suggested = slug.value;
    } else {
      slug.dataset.suggested = "\u0000user";
    }
  }
  function adopt(root) { root.querySelectorAll("[data-slug-from]").forEach(adoptOne); }
  document.addEventListener("DOMContentLoaded", () => adopt(document));
  document.addEventListener("htmx:load", (event) => adopt(event.detail.elt));

  window.hangarUI = { toast, slugify };
})();
