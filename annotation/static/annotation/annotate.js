// Annotator page: lease a comparison, show it, take a keyboard-first vote, fetch the next one.
// All HTML inserted here was rendered by the server from markdown with raw HTML escaped.
(function () {
  "use strict";
  const app = document.getElementById("app");
  const slug = app.dataset.campaign;
  const csrf = app.dataset.csrf;
  const $ = (id) => document.getElementById(id);
  const form = $("vote-form"), skipForm = $("skip-form"), rationale = $("rationale");
  let current = null;   // the leased assignment
  let shownAt = 0;      // when it appeared, for seconds spent
  let busy = false;

  async function api(path, body) {
    const res = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "application/json" },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await res.json(); } catch (e) { /* empty body */ }
    if (!res.ok) {
      const err = new Error((data.error && data.error.message) || ("Request failed: " + res.status));
      err.code = data.error && data.error.code;
      throw err;
    }
    return data;
  }

  function say(text, kind) {
    const m = $("message");
    m.textContent = text || "";
    m.className = "message " + (kind || "");
  }

  function showProgress(p) {
    $("counter").textContent = p.done + " done · " + p.remaining + (p.remaining_capped ? "+" : "") + " left";
  }

  function render(a) {
    current = a;
    form.reset();
    skipForm.hidden = true;
    form.hidden = false;
    const prompt = $("prompt");
    prompt.replaceChildren();
    for (const m of a.messages) {
      const turn = document.createElement("div");
      turn.className = "turn " + m.role;
      const who = document.createElement("div");
      who.className = "role";
      who.textContent = m.role;
      const body = document.createElement("div");
      body.className = "content";
      body.innerHTML = m.html;
      turn.append(who, body);
      prompt.append(turn);
    }
    $("response-a").querySelector(".body").innerHTML = a.responses[0].html;
    $("response-b").querySelector(".body").innerHTML = a.responses[1].html;
    if (a.guideline && $("guideline-version").textContent !== "v" + a.guideline.version) {
      $("guideline-version").textContent = "v" + a.guideline.version;
      $("guideline-body").innerHTML = a.guideline.html;
      say("The guideline changed: please read the new version.", "warn");
    }
    $("item").hidden = false;
    $("empty").hidden = true;
    app.dataset.assignment = a.id;
    shownAt = performance.now();
    window.scrollTo(0, 0);
  }

  let retry = null;

  async function next() {
    busy = true;
    try {
      const data = await api("/api/campaigns/" + slug + "/next/");
      showProgress(data.progress);
      if (data.assignment) {
        render(data.assignment);
      } else {
        current = null;
        $("item").hidden = true;
        $("empty").hidden = false;
        delete app.dataset.assignment;
        // The workers keep sampling new pairs from the policy: look again shortly.
        clearTimeout(retry);
        retry = setTimeout(() => { if (!current && !busy) next(); }, 15000);
      }
    } catch (e) {
      say(e.message, "error");
    } finally {
      busy = false;
    }
  }

  function choose(value) {
    const input = form.querySelector('input[name="choice"][value="' + value + '"]');
    if (input) input.checked = true;
  }

  async function submit() {
    if (!current || busy) return;
    const choice = form.querySelector('input[name="choice"]:checked');
    if (!choice) { say("Choose first: 1 A better, 2 B better, 3 tie, 4 both bad.", "warn"); return; }
    const strength = form.querySelector('input[name="strength"]:checked');
    busy = true;
    try {
      await api("/api/assignments/" + current.id + "/vote/", {
        choice: choice.value,
        strength: strength && (choice.value === "a" || choice.value === "b") ? strength.value : "",
        rationale: rationale.value,
        seconds_spent: Math.round((performance.now() - shownAt) / 100) / 10,
      });
      say("Saved.", "ok");
    } catch (e) {
      say(e.message, "error");
      if (e.code !== "lease_expired" && e.code !== "comparison_closed" && e.code !== "already_voted") { busy = false; return; }
    }
    busy = false;
    await next();
  }

  function openSkip() {
    if (!current) return;
    form.hidden = true;
    skipForm.hidden = false;
    $("skip-reason").value = "";
    $("skip-reason").focus();
  }

  function closeSkip() {
    skipForm.hidden = true;
    form.hidden = false;
  }

  async function skip(reason) {
    if (!current || busy) return;
    busy = true;
    try {
      await api("/api/assignments/" + current.id + "/skip/", { reason: reason });
      say("Skipped.", "ok");
    } catch (e) {
      say(e.message, "error");
    }
    busy = false;
    await next();
  }

  function toggleKeys() {
    const d = $("keys");
    if (d.open) d.close(); else d.showModal();
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
  skipForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const reason = $("skip-reason").value.trim();
    if (reason) skip(reason);
  });
  $("skip").addEventListener("click", openSkip);
  $("skip-cancel").addEventListener("click", closeSkip);
  $("keys-button").addEventListener("click", toggleKeys);

  document.addEventListener("keydown", (ev) => {
    if (ev.altKey || ev.metaKey) return;
    const t = ev.target;
    const typing = t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type === "text"));
    if (typing) {
      if (ev.key === "Escape") {
        t.blur();
        if (t.id === "skip-reason") closeSkip();
      } else if (ev.key === "Enter" && ev.ctrlKey && t === rationale) {
        ev.preventDefault();
        submit();
      }
      return;
    }
    if (ev.ctrlKey) return;
    if ($("keys").open && ev.key !== "?") return;
    switch (ev.key) {
      case "1": choose("a"); break;
      case "2": choose("b"); break;
      case "3": choose("tie"); break;
      case "4": choose("both_bad"); break;
      case "q": form.querySelector('input[name="strength"][value="slightly"]').checked = true; break;
      case "w": form.querySelector('input[name="strength"][value="much"]').checked = true; break;
      case "r": ev.preventDefault(); rationale.focus(); break;
      case "s": ev.preventDefault(); openSkip(); break;
      case "?": toggleKeys(); break;
      case "Enter": ev.preventDefault(); submit(); break;
      default: return;
    }
  });

  next();
})();
