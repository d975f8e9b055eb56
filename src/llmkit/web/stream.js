// Streamed chat completions from an OpenAI-compatible server:
//   window.llmkitStream.chat({url, apiKey, body, onDelta, signal})
//     -> {text, finishReason, usage, seconds, firstTokenSeconds, tokens}
//   window.llmkitStream.formatTiming(seconds, tokens) -> "3.08 sec total, 13.94 tokens/sec, 43 tokens"
//
// The reply is read as server-sent events (the WHATWG HTML spec, "Server-sent events": lines
// end in \n, \r\n or \r; `data:` lines of one event are joined by \n; a blank line ends the
// event), parsed as the bytes arrive, however the network splits them. OpenAI's stream ends with
// `data: [DONE]`; with stream_options.include_usage the last chunk before it holds the usage.
// fetch + a stream reader, not EventSource: EventSource can neither POST nor send a header.
"use strict";

(function () {
  function now() {
    return performance.now() / 1000;
  }

  function isAbort(error, signal) {
    return (signal && signal.aborted) || (error && error.name === "AbortError");
  }

  // An Error carrying the server's message (OpenAI's {"error": {"message", "code", ...}}).
  function apiError(message, status, code) {
    const e = new Error(message);
    e.status = status;
    e.code = code || null;
    return e;
  }

  async function errorFromResponse(resp) {
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    const err = data && data.error;
    if (err && typeof err.message === "string" && err.message) {
      return apiError(err.message, resp.status, err.code);
    }
    if (data && typeof data.detail === "string") return apiError(data.detail, resp.status, null);
    return apiError("HTTP " + resp.status + (resp.statusText ? " " + resp.statusText : ""), resp.status, null);
  }

  // Splits a growing text into SSE events; feed(text) returns the data of each complete event.
  function sseParser() {
    let pending = "";
    let data = [];
    return function feed(chunk, final) {
      pending += chunk;
      const events = [];
      let start = 0;
      for (let i = 0; i < pending.length; i++) {
        const c = pending[i];
        if (c !== "\n" && c !== "\r") continue;
        // A \r at the very end may be the first half of \r\n: wait for the next chunk.
        if (c === "\r" && i === pending.length - 1 && !final) break;
        const line = pending.slice(start, i);
        if (c === "\r" && pending[i + 1] === "\n") i += 1;
        start = i + 1;
        if (line === "") {
          if (data.length) events.push(data.join("\n"));
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line[5] === " " ? 6 : 5));
        }  // other fields (event:, id:, retry:) and :comments are not used by the OpenAI API
      }
      pending = pending.slice(start);
      if (final && data.length) {
        events.push(data.join("\n"));
        data = [];
      }
      return events;
    };
  }

  /**
   * POST `body` (plus stream: true and stream_options.include_usage) to `url` and read the
   * streamed reply. onDelta(deltaText, fullText) is called for each piece of text. Aborting
   * `signal` ends the request and returns what arrived so far with finishReason "aborted".
   * A non-2xx answer, or an error event in the stream, throws an Error with the server's message.
   */
  async function chat(options) {
    const { url, apiKey, body, onDelta, signal } = options;
    const started = now();
    const payload = Object.assign({}, body || {}, {
      stream: true,
      stream_options: Object.assign({}, (body && body.stream_options) || {}, { include_usage: true }),
    });
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (apiKey) headers.Authorization = "Bearer " + apiKey;

    let text = "";
    let finishReason = null;
    let usage = null;
    let firstTokenSeconds = null;
    let contentChunks = 0;
    const result = (reason) => ({
      text: text,
      finishReason: reason,
      usage: usage,
      seconds: now() - started,
      firstTokenSeconds: firstTokenSeconds,
      tokens: usage && typeof usage.completion_tokens === "number" ? usage.completion_tokens : contentChunks,
    });

    let resp;
    try {
      resp = await fetch(url, { method: "POST", headers: headers, body: JSON.stringify(payload), signal: signal });
    } catch (e) {
      if (isAbort(e, signal)) return result("aborted");
      throw new Error("cannot reach the server: " + e.message);
    }
    if (!resp.ok) throw await errorFromResponse(resp);
    if (!resp.body) throw new Error("the server sent no stream");

    const reader = resp.body.getReader();
    const decoder = new TextDecoder("utf-8");
    const feed = sseParser();
    let done = false;

    const handle = (data) => {
      if (data === "[DONE]") {
        done = true;
        return;
      }
      let obj;
      try {
        obj = JSON.parse(data);
      } catch (e) {
        throw new Error("the server sent an event that is not JSON: " + data.slice(0, 80));
      }
      if (obj.error) throw apiError(obj.error.message || "the server reported an error", 0, obj.error.code);
      if (obj.usage) usage = obj.usage;
      const choice = obj.choices && obj.choices[0];
      if (!choice) return;
      // Chat chunks carry delta.content; completion chunks (/v1/completions) carry text.
      const delta = choice.delta ? choice.delta.content : choice.text;
      if (typeof delta === "string" && delta) {
        if (firstTokenSeconds === null) firstTokenSeconds = now() - started;
        text += delta;
        contentChunks += 1;
        if (onDelta) onDelta(delta, text);
      }
      if (choice.finish_reason) finishReason = choice.finish_reason;
    };

    try {
      while (!done) {
        let step;
        try {
          step = await reader.read();
        } catch (e) {
          if (isAbort(e, signal)) return result("aborted");
          throw new Error("the connection broke off: " + e.message);
        }
        const chunk = step.done ? decoder.decode() : decoder.decode(step.value, { stream: true });
        for (const data of feed(chunk, step.done)) {
          handle(data);
          if (done) break;
        }
        if (step.done) break;
      }
    } finally {
      if (!done || signal && signal.aborted) reader.cancel().catch(() => {});
    }
    if (signal && signal.aborted && !done) return result("aborted");
    if (!done && finishReason === null) throw new Error("the stream ended before the reply was complete");
    return result(finishReason);
  }

  /** "3.08 sec total, 13.94 tokens/sec, 43 tokens", as `llmkit chat` prints it. */
  function formatTiming(seconds, tokens) {
    const s = Number(seconds) || 0;
    const n = Number(tokens) || 0;
    const rate = s > 0 ? n / s : 0;
    return s.toFixed(2) + " sec total, " + rate.toFixed(2) + " tokens/sec, " + n + " tokens";
  }

  window.llmkitStream = Object.freeze({ chat: chat, formatTiming: formatTiming });
})();
