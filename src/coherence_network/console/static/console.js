// Live updates for the console. Every page is complete without JavaScript; this only spares the reloads:
// the overview re-reads itself, and a pending or running task's page follows its log and status through the
// JSON API (the session cookie authorizes those GETs).
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main) return;

  // Replace <main> (content and data- attributes) with a fresh copy of this page; false when that failed.
  async function swapMain() {
    const answer = await fetch(location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}});
    if (!answer.ok || answer.redirected) return false;
    const fresh = new DOMParser().parseFromString(await answer.text(), "text/html").getElementById("main");
    if (!fresh) return false;
    for (const name of main.getAttributeNames()) if (name.startsWith("data-")) main.removeAttribute(name);
    for (const name of fresh.getAttributeNames()) {
      if (name.startsWith("data-")) main.setAttribute(name, fresh.getAttribute(name));
    }
    main.innerHTML = fresh.innerHTML;
    return true;
  }

  // Someone is typing into a form on the page: a refresh now would throw their text away.
  function busy() {
    const active = document.activeElement;
    if (active && main.contains(active) && active.matches("input, textarea, select")) return true;
    return [...main.querySelectorAll("textarea, input[type=text], input[type=search]")].some((e) => e.value);
  }

  const pause = (ms) => new Promise((done) => setTimeout(done, ms));

  async function refreshEvery(seconds) {
    for (;;) {
      await pause(seconds * 1000);
      if (document.hidden || busy()) continue;
      try { await swapMain(); } catch (e) { /* the API is restarting: next time */ }
    }
  }

  async function followTask() {
    while (main.dataset.task) {
      await pause(1000);
      const id = main.dataset.task;
      try {
        const log = await fetch(`/api/agent/tasks/${id}/log?tail=${main.dataset.tail}`, {credentials: "same-origin"});
        const pre = document.getElementById("log-text");
        if (log.ok && pre) {
          const text = await log.text();
          if (pre.textContent !== text) {
            const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            pre.textContent = text;
            if (atEnd) pre.scrollTop = pre.scrollHeight;
          }
        }
        const task = await fetch(`/api/agent/tasks/${id}`, {credentials: "same-origin"});
        if (task.ok && (await task.json()).status !== main.dataset.status) await swapMain();
      } catch (e) { /* the API is restarting: next second */ }
    }
  }

  if (Number(main.dataset.refresh)) refreshEvery(Number(main.dataset.refresh));
  if (main.dataset.task) followTask();
})();
