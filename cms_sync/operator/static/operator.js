// Progressive enhancement only: every page works without this file.
// - Replay buttons post in the background and mark their row, without a reload.
// - A page with [data-refresh] redraws its <main> every so many seconds.
"use strict";

let inFlight = 0; // replays being sent: a refresh then would redraw under them

async function replay(form) {
  const button = form.querySelector("button");
  const row = form.closest("tr");
  button.disabled = true;
  inFlight += 1;
  const body = new FormData(form);
  try {
    const answer = await fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(body),
      headers: { "accept": "application/json", "x-csrf-token": body.get("csrf") },
      credentials: "same-origin",
    });
    const result = await answer.json();
    if (!answer.ok) throw new Error(result.error || JSON.stringify(result.refused));
    const queued = result.queued || [];
    if (row) {
      row.classList.add("queued");
      button.textContent = "Queued";
    } else {
      document.querySelectorAll("tr[data-document]").forEach((tr) => {
        if (queued.includes(tr.dataset.document)) tr.classList.add("queued");
      });
      button.textContent = `Queued ${queued.length}`;
    }
  } catch (error) {
    button.disabled = false;
    const note = document.createElement("p");
    note.className = "error";
    note.setAttribute("role", "alert");
    note.textContent = `Replay failed: ${error.message}`;
    form.after(note);
  } finally {
    inFlight -= 1;
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.matches("form.replay, form.replay-all")) {
    event.preventDefault();
    replay(form);
  }
});

function refreshEvery() {
  const marked = document.querySelector("[data-refresh]");
  if (!marked) return;
  const seconds = Number(marked.dataset.refresh) || 10;
  setInterval(async () => {
    if (document.hidden || inFlight > 0) return;
    const answer = await fetch(location.href, { credentials: "same-origin" });
    if (!answer.ok || answer.redirected) return;
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    const main = page.querySelector("main");
    if (main) document.querySelector("main").replaceWith(main);
  }, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", refreshEvery);
