// The arena's pages: a battle (/) and the leaderboard (/leaderboard).
// Model output is rendered with llmkitMarkdown.render (DOM nodes and textContent only, never HTML);
// names and numbers from the server go through textContent too.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY = "llmkit-arena-key";
  const USER = "llmkit-arena-user";

  function apiKey() { return sessionStorage.getItem(KEY) || ""; }
  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    if (apiKey()) h["Authorization"] = "Bearer " + apiKey();
    return h;
  }
  function showError(message) {
    const el = $("error");
    el.textContent = message || "";
    el.hidden = !message;
  }
  function askForKey() { $("keybar").hidden = false; $("apikey").focus(); }
  // A form, so that Enter uses the key too; the key is tried at once (onKey), so a wrong one is
  // refused now rather than after a prompt, and it is not left in the input for anyone to read.
  function setupKeybar(onKey) {
    $("keybar").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("apikey").value.trim());
      $("apikey").value = "";
      $("keybar").hidden = true;
      showError("");
      onKey();
    });
  }

  // An /api call: the parsed JSON, or an Error with the server's message (a 401 asks for the key).
  async function api(path, body) {
    const resp = await fetch(path, body === undefined ? { headers: headers(false) }
      : { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      if (resp.status === 401) askForKey();
      const message = data && data.error && data.error.message ? data.error.message : "HTTP " + resp.status;
      throw new Error(message);
    }
    return data;
  }

  // --- the battle page ---------------------------------------------------------------------
  function battlePage() {
    let battle = null;
    let shown = {};  // side -> characters shown of a reply stopped midway (sent with the vote)
    let controller = null;
    const voteButtons = Array.from(document.querySelectorAll("#votes button"));
    const user = $("user");
    user.value = localStorage.getItem(USER) || "";
    user.addEventListener("change", () => localStorage.setItem(USER, user.value.trim()));

    function setVoting(on) { voteButtons.forEach((b) => { b.disabled = !on; }); }
    function reset() {
      battle = null;
      shown = {};
      for (const side of ["a", "b"]) {
        $("reply-" + side).replaceChildren();
        $("timing-" + side).textContent = "";
        $("name-" + side).textContent = "";
      }
      $("reveal").hidden = true;
      setVoting(false);
      $("send").disabled = false;
      $("prompt").disabled = false;
    }

    async function streamSide(id, side, signal) {
      const box = $("reply-" + side);
      const result = await window.llmkitStream.chat({
        url: "/api/battles/" + encodeURIComponent(id) + "/" + side,
        apiKey: apiKey(),
        body: {},
        signal: signal,
        onDelta: (delta, full) => { box.replaceChildren(window.llmkitMarkdown.render(full)); },
      });
      box.replaceChildren(window.llmkitMarkdown.render(result.text));
      const timing = window.llmkitStream.formatTiming(result.seconds, result.tokens);
      const stopped = result.finishReason === "aborted";
      if (stopped) shown[side] = result.text.length;
      $("timing-" + side).textContent = (stopped ? "(stopped) " : "") + timing;
      return result;
    }

    $("ask").addEventListener("submit", async (event) => {
      event.preventDefault();
      const prompt = $("prompt").value;
      if (!prompt.trim()) return;
      reset();
      showError("");
      $("send").disabled = true;
      $("prompt").disabled = true;
      try {
        const created = await api("/api/battles", {
          prompt: prompt,
          system: $("system").value,
          max_tokens: Number($("max_tokens").value),
          temperature: Number($("temperature").value),
          top_p: Number($("top_p").value),
          user: user.value.trim(),
        });
        battle = created.battle;
        controller = new AbortController();
        $("stop").disabled = false;
        const results = await Promise.allSettled([streamSide(battle, "a", controller.signal),
                                                  streamSide(battle, "b", controller.signal)]);
        const failed = results.filter((r) => r.status === "rejected");
        if (failed.length) showError(failed.map((r) => r.reason.message).join("; "));
        setVoting(true);
      } catch (e) {
        showError(e.message);
        $("send").disabled = false;
        $("prompt").disabled = false;
      } finally {
        $("stop").disabled = true;
        controller = null;
      }
    });

    $("stop").addEventListener("click", () => { if (controller) controller.abort(); });

    voteButtons.forEach((button) => button.addEventListener("click", async () => {
      if (!battle) return;
      setVoting(false);
      try {
        const res = await api("/api/votes", { battle: battle, winner: button.dataset.winner, user: user.value.trim(),
                                              shown: shown });
        $("name-a").textContent = "— " + res.model_a;
        $("name-b").textContent = "— " + res.model_b;
        const said = { a: "Model A (" + res.model_a + ") is better", b: "Model B (" + res.model_b + ") is better",
                       tie: "a tie", both_bad: "both are bad" }[res.winner];
        $("reveal-text").textContent = "Vote #" + res.id + " recorded: " + said + ". Model A was " + res.model_a
          + ", model B was " + res.model_b + ".";
        $("reveal").hidden = false;
        battle = null;
      } catch (e) {
        showError(e.message);
        setVoting(true);
      }
    }));

    $("again").addEventListener("click", () => {
      reset();
      $("prompt").value = "";
      $("prompt").focus();
    });
    // With a users file the vote's user is the key's owner: show that name, not an input that
    // would be ignored.
    async function checkKey() {
      try {
        const info = await api("/api/info");
        if (info.users) {
          user.value = info.user || "";
          user.disabled = true;
          user.title = "the user of your API key";
        }
      } catch (e) {
        showError(e.message);
      }
    }
    setupKeybar(checkKey);
    checkKey();
  }

  // --- the leaderboard page ----------------------------------------------------------------
  function leaderboardPage() {
    let heatmapUrl = null;
    const fmt = (x, digits) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));

    async function load() {
      showError("");
      try {
        const data = await api("/api/leaderboard");
        const rows = data.rows || [];
        $("summary").textContent = data.votes + (data.votes === 1 ? " vote" : " votes") + " over "
          + data.models.length + " models.";
        const body = $("rows");
        body.replaceChildren();
        rows.forEach((r, i) => {
          const tr = document.createElement("tr");
          const cells = [String(i + 1), r.model, fmt(r.rating, 0), fmt(r.ci_low, 0) + " – " + fmt(r.ci_high, 0),
                         fmt(r.elo, 0), String(r.battles), String(r.wins), String(r.ties), String(r.losses),
                         fmt(100 * r.win_rate, 1) + "%"];
          for (const text of cells) {
            const td = document.createElement("td");
            td.textContent = text;
            tr.appendChild(td);
          }
          body.appendChild(tr);
        });
        if (data.votes > 0) {
          // Fetched, not <img src>: the key goes in a header, never in a URL.
          const resp = await fetch("/api/winrates.png", { headers: headers(false) });
          if (resp.ok) {
            if (heatmapUrl) URL.revokeObjectURL(heatmapUrl);
            heatmapUrl = URL.createObjectURL(await resp.blob());
            $("heatmap-img").src = heatmapUrl;
            $("heatmap").hidden = false;
          }
        }
      } catch (e) {
        $("summary").textContent = "";
        showError(e.message);
      }
    }
    $("refresh").addEventListener("click", load);
    setupKeybar(load);
    load();
  }

  if (document.getElementById("ask")) battlePage();
  if (document.getElementById("rows")) leaderboardPage();
})();
