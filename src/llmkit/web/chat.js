// The chat page of `llmkit serve` (GET /): a multi-turn conversation over /v1/chat/completions.
//
// The whole conversation (system prompt, then every user message and reply) goes with each
// request and the server formats it with the model's chat template, as `llmkit chat` does.
// Replies stream in and are rendered with llmkitMarkdown.render (DOM nodes and textContent
// only: model output is never parsed as HTML); user messages are plain text. Under each reply:
// "Time for inference: 3.08 sec total, 13.94 tokens/sec, 43 tokens", the line `llmkit chat`
// prints. When the conversation outgrows the context, the oldest exchanges are left out, as
// `llmkit chat` does (the system prompt always stays).
//
// The API key, when the server needs one, is asked for on the page and kept in sessionStorage
// (this tab only); it is sent as `Authorization: Bearer`, never in a URL.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY = "llmkit-chat-key";
  const URL_CHAT = "/v1/chat/completions";

  let history = [];       // {role, content} of finished exchanges, oldest first
  let firstKept = 0;      // history[firstKept:] is sent: earlier exchanges no longer fit
  let controller = null;  // the AbortController of the reply being streamed
  let modelName = null;
  let chatId = 0;         // bumped by New chat: a reply still arriving then belongs to no chat

  function apiKey() {
    return sessionStorage.getItem(KEY) || "";
  }

  function showError(message) {
    $("error").textContent = message || "";
    $("error").hidden = !message;
  }

  function askForKey() {
    $("keybar").hidden = false;
    $("apikey").focus();
  }

  function scrolledToBottom() {
    const box = $("messages");
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }

  function scrollToBottom() {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

  function bubble(role) {
    $("empty").hidden = true;
    const node = document.createElement("div");
    node.className = "message " + role;
    const content = document.createElement("div");
    content.className = "content";
    node.appendChild(content);
    $("messages").appendChild(node);
    return { node: node, content: content };
  }

  // The request body's sampling fields from the settings (an empty field is left to the server).
  function sampling() {
    const out = {};
    for (const [id, integer] of [["max_tokens", true], ["temperature", false], ["top_k", true], ["top_p", false],
                                 ["seed", true]]) {
      const raw = $(id).value.trim();
      if (raw === "") continue;
      const value = Number(raw);
      if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
        throw new Error($(id).parentNode.firstChild.textContent.trim() + " must be " +
                        (integer ? "a whole number" : "a number") + ", got '" + raw + "'");
      }
      out[id] = value;
    }
    return out;
  }

  function messagesFrom(start, userText) {
    const system = $("system").value;
    const messages = system.trim() ? [{ role: "system", content: system }] : [];
    return messages.concat(history.slice(start), [{ role: "user", content: userText }]);
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  async function loadModel() {
    const headers = apiKey() ? { Authorization: "Bearer " + apiKey() } : {};
    try {
      const resp = await fetch("/v1/models", { headers: headers });
      const data = await resp.json().catch(() => null);
      if (!resp.ok) {
        if (resp.status === 401) askForKey();
        showError(data && data.error && data.error.message ? data.error.message : "HTTP " + resp.status);
        return;
      }
      const model = data && data.data && data.data[0];
      if (model) {
        modelName = model.id;
        $("model").textContent = model.id + (model.max_model_len ? " · context " + model.max_model_len + " tokens" : "");
      }
      showError("");
    } catch (e) {
      showError("cannot reach the server: " + e.message);
    }
  }

  async function send(userText) {
    const myChat = chatId;
    showError("");
    const user = bubble("user");
    user.content.textContent = userText;
    const reply = bubble("assistant");
    const timing = document.createElement("div");
    timing.className = "timing";
    reply.node.appendChild(timing);
    reply.node.classList.add("streaming");
    scrollToBottom();

    controller = new AbortController();
    setBusy(true);
    let params;
    try {
      params = sampling();
    } catch (e) {
      params = null;
      showError(e.message);
    }
    let result = null;
    let start = firstKept;
    let dropped = false;
    try {
      while (params) {
        const body = Object.assign({ messages: messagesFrom(start, userText) }, params);
        if (modelName) body.model = modelName;
        try {
          result = await window.llmkitStream.chat({
            url: URL_CHAT,
            apiKey: apiKey(),
            body: body,
            signal: controller.signal,
            onDelta: (delta, full) => {
              const follow = scrolledToBottom();
              reply.content.replaceChildren(window.llmkitMarkdown.render(full));
              if (follow) scrollToBottom();
            },
          });
          break;
        } catch (e) {
          // Too long for the context: leave out the oldest exchange (a user message and its
          // reply) and ask again, as `llmkit chat` does; with nothing left to drop, let the
          // server choose max_tokens (the rest of the context) before giving up.
          if (e.code === "context_length_exceeded" && start + 2 <= history.length) {
            start += 2;
            dropped = true;
            continue;
          }
          if (e.code === "context_length_exceeded" && params.max_tokens !== undefined) {
            delete params.max_tokens;
            continue;
          }
          throw e;
        }
      }
    } catch (e) {
      if (e.status === 401) askForKey();
      showError(e.message);
      result = null;
    } finally {
      controller = null;
      setBusy(false);
      reply.node.classList.remove("streaming");
    }

    if (myChat !== chatId) return;  // New chat was pressed meanwhile
    if (!result) {  // nothing was answered: the message is not part of the conversation
      reply.node.remove();
      user.node.classList.add("failed");
      user.node.title = "not sent";
      if (!$("input").value) $("input").value = userText;
      return;
    }
    firstKept = start;
    history.push({ role: "user", content: userText }, { role: "assistant", content: result.text });
    reply.content.replaceChildren(window.llmkitMarkdown.render(result.text));
    const notes = [];
    if (result.finishReason === "aborted") notes.push("stopped");
    else if (result.finishReason === "length") notes.push("max tokens reached");
    if (dropped) notes.push("the oldest messages were left out to fit the context");
    timing.textContent = "Time for inference: " + window.llmkitStream.formatTiming(result.seconds, result.tokens) +
      (notes.length ? " (" + notes.join("; ") + ")" : "");
    if (result.finishReason === "aborted") reply.node.classList.add("stopped");
    if (scrolledToBottom() || result.finishReason !== "aborted") scrollToBottom();
  }

  function newChat() {
    if (controller) controller.abort();
    chatId += 1;
    history = [];
    firstKept = 0;
    for (const node of Array.from($("messages").querySelectorAll(".message"))) node.remove();
    $("empty").hidden = false;
    showError("");
    $("input").focus();
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value;
    if (!text.trim() || controller) return;
    $("input").value = "";
    send(text);
  });

  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });

  $("stop").addEventListener("click", () => {
    if (controller) controller.abort();
  });

  $("newchat").addEventListener("click", newChat);

  $("keybar").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("apikey").value.trim());
    $("apikey").value = "";
    $("keybar").hidden = true;
    loadModel();
  });

  loadModel();
  $("input").focus();
})();
