// Live updates for the console. Every page is complete without JavaScript; this only spares the reloads and says
// when the page can no longer be trusted:
// - a page with data-refresh re-reads itself every so many seconds (not while someone types into one of its forms);
// - a pending or running task's page follows its log and status through the JSON API (the session cookie
//   authorizes those GETs);
// - when a read fails, a banner (role="alert") says whether the API cannot be reached or answers that its store
//   cannot (503), since when the page is stale, and the page is greyed and labelled stale until a read succeeds;
// - times are shown in the viewer's zone; the server's UTC text stays as the title (shown on hover).
"use strict";
(function () {
  const main = document.getElementById("main");
  const banner = document.getElementById("blind");
  if (!main) return;
  const READ_TIMEOUT_MS = 10000;  // a read that takes longer counts as an API that cannot be reached
  const BLIND_RETRY_MS = 2000;
  let lastGood = new Date();  // this page was rendered just now

  const pad = (n) => String(n).padStart(2, "0");

  function localText(at) {
    const zone = new Intl.DateTimeFormat([], {timeZoneName: "short"}).formatToParts(at)
      .find((part) => part.type === "timeZoneName");
    return `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ` +
      `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}${zone ? " " + zone.value : ""}`;
  }

  // <time datetime="...Z" title="... UTC">: the text in the viewer's zone, the UTC title kept.
  function localTimes(root) {
    for (const element of root.querySelectorAll("time[datetime]")) {
      const at = new Date(element.getAttribute("datetime"));
      if (!Number.isNaN(at.getTime())) element.textContent = localText(at);
    }
  }

  function timeElement(at) {
    const element = document.createElement("time");
    element.dateTime = at.toISOString().replace(/\.\d+Z$/, "Z");
    element.title = element.dateTime.replace("T", " ").replace("Z", " UTC");
    element.textContent = localText(at);
    return element;
  }

  // What went wrong, in words: "api" (no answer at all) or "store" (the API answered 503).
  const BLIND = {
    api: ["The API cannot be reached.", " It comes back by itself once the API answers (docs/RUNBOOK.md, API Restart)."],
    store: ["The API answers, but its store cannot be reached (503).",
            " It comes back by itself once the store answers (docs/RUNBOOK.md, Pipeline Recovery)."],
  };

  function blind(why) {
    if (!banner || (!banner.hidden && banner.dataset.why === why)) return;  // said once: an alert is read out
    const [what, after] = BLIND[why];
    const headline = document.createElement("strong");
    headline.textContent = what;
    banner.replaceChildren(headline, " This page is stale: last good data from ", timeElement(lastGood), ".", after);
    banner.dataset.why = why;
    banner.hidden = false;
    main.classList.add("stale");
    if (!main.querySelector(".stale-label")) {
      const label = document.createElement("p");
      label.className = "stale-label";
      label.textContent = "stale";
      main.prepend(label);
    }
  }

  function seeing() {
    lastGood = new Date();
    if (banner) { banner.hidden = true; banner.replaceChildren(); delete banner.dataset.why; }
    main.classList.remove("stale");
    for (const label of main.querySelectorAll(".stale-label")) label.remove();
  }

  // One read through the API: the answer, or null once the banner says why there is none.
  async function read(url, options) {
    let answer;
    try {
      answer = await fetch(url, {credentials: "same-origin", cache: "no-store",
                                 signal: AbortSignal.timeout(READ_TIMEOUT_MS), ...options});
    } catch (e) {
      blind("api");
      return null;
    }
    if (answer.status === 503) {
      blind("store");
      return null;
    }
    if (answer.status < 500) seeing();  // the API answered from its store (a 404 too: the task is gone)
    return answer;
  }

  // Replace <main> (content and data- attributes) with this fresh copy of the page.
  async function swapMain(answer) {
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = page.getElementById("main");
    if (!fresh) return;
    document.title = page.title;
    for (const name of main.getAttributeNames()) if (name.startsWith("data-")) main.removeAttribute(name);
    for (const name of fresh.getAttributeNames()) {
      if (name.startsWith("data-")) main.setAttribute(name, fresh.getAttribute(name));
    }
    main.innerHTML = fresh.innerHTML;
    localTimes(main);
    if (main.dataset.task && !following) followTask();
  }

  // Reads this page again; swaps it in unless someone is typing (the read still tells whether the API sees).
  async function reload() {
    const answer = await read(location.href, {headers: {"Accept": "text/html"}});
    if (answer && answer.ok && !answer.redirected && !busy()) await swapMain(answer);
  }

  // Someone is typing into a form on the page: a refresh now would throw their text away.
  function busy() {
    const active = document.activeElement;
    if (active && main.contains(active) && active.matches("input, textarea, select")) return true;
    return [...main.querySelectorAll("textarea, input[type=text], input[type=search]")].some((e) => e.value);
  }

  const pause = (ms) => new Promise((done) => setTimeout(done, ms));

  // Pages without data-refresh (sign-in, error pages) are not read again; a followed task reads every second.
  // While blind, the page is read every BLIND_RETRY_MS, so it comes back soon after the API or the store does.
  async function refreshEvery() {
    for (;;) {
      await pause(banner && !banner.hidden ? BLIND_RETRY_MS : Number(main.dataset.refresh || 5) * 1000);
      if (document.hidden || !main.dataset.refresh || main.dataset.task) continue;
      await reload();
    }
  }

  let following = false;
  async function followTask() {
    following = true;
    while (main.dataset.task) {
      await pause(1000);
      if (document.hidden) continue;
      const id = main.dataset.task;
      // The task first: it comes from the store, the log from a file, so a store outage is not hidden by the log.
      const task = await read(`/api/agent/tasks/${id}`);
      if (!task) continue;
      const log = await read(`/api/agent/tasks/${id}/log?tail=${main.dataset.tail}`);
      const pre = document.getElementById("log-text");
      if (log && log.ok && pre) {
        const text = await log.text();
        if (pre.textContent !== text) {
          const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.textContent = text;
          if (atEnd) pre.scrollTop = pre.scrollHeight;
        }
      }
      if (task.ok && (await task.json()).status !== main.dataset.status) await reload();
    }
    following = false;
  }

  localTimes(document);
  refreshEvery();
  if (main.dataset.task) followTask();
})();
