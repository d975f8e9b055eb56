// Markdown for model output, rendered safely: window.llmkitMarkdown.render(text) -> DocumentFragment.
//
// A small subset of CommonMark (https://spec.commonmark.org/) and of what chat models write:
// paragraphs (a single newline is a line break, as in GitHub comments), ATX headings, **bold**,
// *italic*, `inline code`, ``` / ~~~ fenced code blocks with an optional language (class
// "language-X", the HTML spec's convention for <code>), bullet and numbered lists (nested by
// indentation), > quotes, --- rules, [links](https://...) and bare https:// URLs.
//
// Safety: every node is made with document.createElement (fixed tag names) and every piece of
// the model's text goes in through textContent / createTextNode, never as HTML (no innerHTML,
// outerHTML, insertAdjacentHTML or document.write), so `<img onerror=...>` or `<script>` in a
// reply is shown as text. Attributes set: class (language names limited to [\w+#.-]), ol's
// start (a number), and href only for http: and https: URLs (checked with the URL parser), with
// rel="noopener noreferrer" and target="_blank".
//
// Streaming: render is called again with the whole text on every chunk, so half-written input
// must render sensibly: an unclosed code fence is a code block up to the end, an unclosed ** or
// ` is shown as the characters themselves until its closing marker arrives.
"use strict";

(function () {
  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?(.*)$/;
  const ITEM = /^([ \t]*)([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
  const EMPTY_ITEM = /^([ \t]*)([-*+]|\d{1,9}[.)])[ \t]*$/;
  const BLANK = /^\s*$/;
  const LANG = /^[\w+#.-]{1,40}$/;

  function el(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function indentOf(s) {
    let n = 0;
    for (const ch of s) {
      if (ch === " ") n += 1;
      else if (ch === "\t") n += 4 - (n % 4);
      else break;
    }
    return n;
  }

  function listItem(line) {
    const m = ITEM.exec(line) || EMPTY_ITEM.exec(line);
    if (!m) return null;
    const marker = m[2];
    const ordered = /\d/.test(marker[0]);
    // "---" and "***" are rules, not items.
    if (!ordered && RULE.test(line)) return null;
    return { indent: indentOf(m[1]), ordered: ordered, start: ordered ? parseInt(marker, 10) : 1,
             text: m[3] || "" };
  }

  // --- inline: code spans, emphasis, links ---------------------------------------------------
  function safeUrl(raw) {
    if (!/^https?:\/\//i.test(raw)) return null;
    try {
      const url = new URL(raw);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  // An <a> for a checked http(s) URL, appended to parent; the caller fills in its text.
  function link(href, parent) {
    const a = el("a");
    a.href = href;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    parent.appendChild(a);
    return a;
  }

  const WORD = /[\p{L}\p{N}]/u;

  // The end of an emphasis run opened by `marker` at `from` (the index of the closing marker), or -1.
  function closing(text, marker, from) {
    let i = from;
    while (true) {
      i = text.indexOf(marker, i);
      if (i < 0) return -1;
      const before = text[i - 1];
      const after = text[i + marker.length];
      const rightFlanking = before !== undefined && !/\s/.test(before);
      // A single * must not be half of a ** (and the reverse is handled by trying ** first).
      const partOfLonger = marker.length === 1 && (after === marker || before === marker);
      const wordAfter = marker[0] === "_" && after !== undefined && WORD.test(after);
      if (i > from && rightFlanking && !partOfLonger && !wordAfter) return i;
      i += marker.length;
    }
  }

  function inline(text, parent, allowLinks) {
    let buf = "";
    const flush = () => {
      if (buf) parent.appendChild(document.createTextNode(buf));
      buf = "";
    };
    let i = 0;
    while (i < text.length) {
      const ch = text[i];
      if (ch === "\\" && i + 1 < text.length && /[!-\/:-@\[-`{-~]/.test(text[i + 1])) {
        buf += text[i + 1];
        i += 2;
        continue;
      }
      if (ch === "`") {
        let n = 1;
        while (text[i + n] === "`") n += 1;
        const fence = "`".repeat(n);
        let j = text.indexOf(fence, i + n);
        while (j >= 0 && text[j + n] === "`") j = text.indexOf(fence, j + n + 1);
        if (j < 0) {
          buf += fence;
          i += n;
          continue;
        }
        flush();
        let code = text.slice(i + n, j);
        if (code.length > 2 && code[0] === " " && code[code.length - 1] === " " && code.trim()) code = code.slice(1, -1);
        const node = el("code");
        node.textContent = code;
        parent.appendChild(node);
        i = j + n;
        continue;
      }
      if (ch === "*" || ch === "_") {
        const double = text[i + 1] === ch;
        const marker = double ? ch + ch : ch;
        const next = text[i + marker.length];
        const prev = text[i - 1];
        const leftFlanking = next !== undefined && !/\s/.test(next);
        const wordBefore = ch === "_" && prev !== undefined && WORD.test(prev);
        if (leftFlanking && !wordBefore) {
          const j = closing(text, marker, i + marker.length);
          if (j > i + marker.length) {
            flush();
            const node = el(double ? "strong" : "em");
            inline(text.slice(i + marker.length, j), node, allowLinks);
            parent.appendChild(node);
            i = j + marker.length;
            continue;
          }
        }
        buf += marker;
        i += marker.length;
        continue;
      }
      if (allowLinks && ch === "[") {
        const m = /^\[([^\[\]]+)\]\(\s*(\S+?)\s*\)/.exec(text.slice(i));
        const href = m ? safeUrl(m[2]) : null;
        if (href) {
          flush();
          const a = link(href, parent);
          inline(m[1], a, false);
          i += m[0].length;
          continue;
        }
      }
      if (allowLinks && (ch === "h" || ch === "H") && (i === 0 || !WORD.test(text[i - 1]))) {
        const m = /^https?:\/\/[^\s<>"'`]+/i.exec(text.slice(i));
        if (m) {
          let raw = m[0];
          // Trailing punctuation ends the sentence, not the URL (GitHub's autolink rule).
          while (/[.,;:!?*_~]$/.test(raw) || (raw.endsWith(")") && (raw.match(/\(/g) || []).length < (raw.match(/\)/g) || []).length)) {
            raw = raw.slice(0, -1);
          }
          const href = safeUrl(raw);
          if (href) {
            flush();
            link(href, parent).textContent = raw;
            i += raw.length;
            continue;
          }
        }
      }
      buf += ch;
      i += 1;
    }
    flush();
  }

  // Lines of a paragraph (or a list item): joined with <br>, each rendered inline.
  function inlineLines(lines, parent) {
    lines.forEach((line, k) => {
      if (k > 0) parent.appendChild(el("br"));
      inline(k < lines.length - 1 ? line.replace(/[ \t]+$/, "") : line.trim(), parent, true);
    });
  }

  // --- blocks ----------------------------------------------------------------------------------
  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || listItem(line) !== null;
  }

  function codeBlock(lines, start, parent) {
    const open = FENCE.exec(lines[start]);
    const fence = open[1];
    const openIndent = indentOf(lines[start]);
    const body = [];
    let i = start + 1;
    for (; i < lines.length; i++) {
      const line = lines[i];
      const close = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(line);
      if (close && close[1][0] === fence[0] && close[1].length >= fence.length) {
        i += 1;
        break;
      }
      // Content indented like its fence loses that indentation (CommonMark 4.5).
      let strip = 0;
      while (strip < openIndent && line[strip] === " ") strip += 1;
      body.push(line.slice(strip));
    }
    const pre = el("pre");
    const code = el("code");
    if (open[2] && LANG.test(open[2])) code.className = "language-" + open[2];
    code.textContent = body.join("\n");
    pre.appendChild(code);
    parent.appendChild(pre);
    return i;
  }

  // A list starting at lines[start]: items at this list's indentation, deeper lines belong to the
  // last item (nested lists, continuation text). Returns the index after the list.
  function list(lines, start, parent) {
    const first = listItem(lines[start]);
    const node = el(first.ordered ? "ol" : "ul");
    if (first.ordered && first.start !== 1) node.setAttribute("start", String(first.start));
    parent.appendChild(node);
    let i = start;
    while (i < lines.length) {
      const item = listItem(lines[i]);
      if (!item || item.ordered !== first.ordered || item.indent < first.indent || item.indent > first.indent + 1) break;
      const li = el("li");
      node.appendChild(li);
      // The item's own lines, then lines indented past the marker (sub-lists, more text).
      const body = [item.text];
      i += 1;
      let blankRun = 0;
      while (i < lines.length) {
        const line = lines[i];
        if (BLANK.test(line)) {
          blankRun += 1;
          i += 1;
          continue;
        }
        const deeper = indentOf(line) > first.indent + 1;
        const lazy = blankRun === 0 && !startsBlock(line);  // a wrapped line of the item's text
        if (!deeper && !lazy) break;
        if (blankRun) body.push("");
        body.push(deeper ? line.slice(Math.min(indentOf(line), first.indent + 2)) : line);
        blankRun = 0;
        i += 1;
      }
      // A tight item (no blank line in it) keeps its text inline in the <li>, with any sub-list
      // or other block after it; a loose one is rendered as blocks (<p>...), as CommonMark 5.3
      // renders tight and loose lists.
      if (!body.includes("")) {
        let lead = 0;  // the item's leading text lines, up to its first block
        while (lead < body.length && !startsBlock(body[lead])) lead += 1;
        if (lead) inlineLines(body.slice(0, lead), li);
        if (lead < body.length) blocks(body.slice(lead), li);
      } else {
        blocks(body, li);
      }
      // After a blank line only an item of this same list continues it.
      if (blankRun && i < lines.length) {
        const nextItem = listItem(lines[i]);
        if (!nextItem || nextItem.ordered !== first.ordered || nextItem.indent !== first.indent) break;
      }
    }
    return i;
  }

  function blocks(lines, parent) {
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (BLANK.test(line)) {
        i += 1;
        continue;
      }
      if (FENCE.test(line)) {
        i = codeBlock(lines, i, parent);
        continue;
      }
      const h = HEADING.exec(line);
      if (h) {
        const node = el("h" + h[1].length);
        inline((h[2] || "").trim(), node, true);
        parent.appendChild(node);
        i += 1;
        continue;
      }
      if (RULE.test(line)) {
        parent.appendChild(el("hr"));
        i += 1;
        continue;
      }
      if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && QUOTE.test(lines[i])) {
          quoted.push(QUOTE.exec(lines[i])[1]);
          i += 1;
        }
        const node = el("blockquote");
        blocks(quoted, node);
        parent.appendChild(node);
        continue;
      }
      if (listItem(line)) {
        i = list(lines, i, parent);
        continue;
      }
      const para = [];
      while (i < lines.length && !BLANK.test(lines[i]) && (para.length === 0 || !startsBlock(lines[i]))) {
        para.push(lines[i]);
        i += 1;
      }
      const p = el("p");
      inlineLines(para, p);
      parent.appendChild(p);
    }
  }

  /** The markdown `text` as a DocumentFragment of elements and text nodes (no HTML parsing). */
  function render(text) {
    const fragment = document.createDocumentFragment();
    const source = String(text === undefined || text === null ? "" : text);
    blocks(source.replace(/\r\n?/g, "\n").split("\n"), fragment);
    return fragment;
  }

  window.llmkitMarkdown = Object.freeze({ render: render });
})();
