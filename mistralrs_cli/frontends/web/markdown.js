// A small, safe Markdown subset for model answers, built as DOM nodes.
//
// Model text is never parsed as HTML: every piece of it reaches the page through
// createTextNode or textContent, so `<img src=x onerror=...>` in an answer is shown as those
// characters. Links keep only http(s) and mailto targets; images are shown as links (the page
// loads nothing a model names). Unfinished syntax while streaming (an open code fence, a lone
// `**`) renders as what it is so far.
//
// Blocks: paragraphs (line breaks kept), # headings, ``` / ~~~ fenced code, > quotes, - * + and
// 1. lists (nested by indentation), | tables |, --- rules. Inline: `code`, **bold**, *italic*,
// ~~strike~~, [links](https://...), <https://autolinks> and bare https:// addresses, \escapes.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_RULE = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const SAFE_URL = /^(https?:\/\/|mailto:)/i;

function el(tag, parent, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

/** Replace the children of `container` with `text` rendered as Markdown. */
export function renderMarkdown(text, container) {
  const fragment = document.createDocumentFragment();
  renderBlocks(text.replace(/\r\n?/g, "\n").split("\n"), fragment);
  container.replaceChildren(fragment);
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      i = codeBlock(lines, i, m, parent);
    } else if ((m = HEADING.exec(line))) {
      inline(m[2], el(`h${m[1].length}`, parent));
      i++;
    } else if (RULE.test(line)) {
      el("hr", parent);
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i++;
      }
      renderBlocks(inner, el("blockquote", parent));
    } else if (ITEM.test(line)) {
      i = list(lines, i, parent);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      i = table(lines, i, parent);
    } else {
      i = paragraph(lines, i, parent);
    }
  }
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function paragraph(lines, i, parent) {
  const p = el("p", parent);
  let first = true;
  while (i < lines.length && lines[i].trim() && (first || !startsBlock(lines[i]))) {
    if (!first) el("br", p);
    inline(lines[i].trim(), p);
    first = false;
    i++;
  }
  return i;
}

function codeBlock(lines, i, match, parent) {
  const fence = match[1];
  const body = [];
  i++;
  while (i < lines.length && !(lines[i].trim().startsWith(fence[0].repeat(fence.length)) && !lines[i].trim().replace(/[`~]/g, ""))) {
    body.push(lines[i]);
    i++;
  }
  const pre = el("pre", parent);
  const code = el("code", pre, body.join("\n"));
  if (match[2]) {
    code.dataset.language = match[2];
    pre.dataset.language = match[2];
  }
  return i + 1; // past the closing fence (or the end, while it is still streaming)
}

function list(lines, i, parent) {
  const first = ITEM.exec(lines[i]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const node = el(ordered ? "ol" : "ul", parent);
  const start = parseInt(first[2], 10);
  if (ordered && start !== 1) node.start = start;
  let m;
  while (i < lines.length && (m = ITEM.exec(lines[i])) && m[1].length === indent && /\d/.test(m[2]) === ordered) {
    const content = [m[3]];
    const width = m[1].length + m[2].length + 1;
    i++;
    // The item goes on over more-indented lines (a nested list, a continued paragraph) and
    // blank lines followed by such.
    while (i < lines.length) {
      const next = lines[i];
      const deeper = next.trim() && next.search(/\S/) > indent;
      const blankThenDeeper = !next.trim() && i + 1 < lines.length && lines[i + 1].trim() && lines[i + 1].search(/\S/) > indent;
      if (!deeper && !blankThenDeeper) break;
      content.push(next.slice(Math.min(width, next.search(/\S/) === -1 ? 0 : next.search(/\S/))));
      i++;
    }
    const li = el("li", node);
    renderBlocks(content, li);
    // A tight item is one paragraph: show its text without the paragraph's margins.
    if (li.firstChild && li.firstChild.nodeName === "P") {
      const p = li.firstChild;
      while (p.firstChild) li.insertBefore(p.firstChild, p);
      p.remove();
    }
  }
  return i;
}

function cells(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function table(lines, i, parent) {
  const wrap = el("div", parent);
  wrap.className = "table-wrap";
  const tableNode = el("table", wrap);
  const head = el("tr", el("thead", tableNode));
  const aligns = cells(lines[i + 1]).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : ""));
  cells(lines[i]).forEach((cell, k) => {
    const th = el("th", head);
    if (aligns[k]) th.style.textAlign = aligns[k];
    inline(cell, th);
  });
  const body = el("tbody", tableNode);
  i += 2;
  while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
    const tr = el("tr", body);
    cells(lines[i]).forEach((cell, k) => {
      const td = el("td", tr);
      if (aligns[k]) td.style.textAlign = aligns[k];
      inline(cell, td);
    });
    i++;
  }
  return i;
}

// Inline spans, earliest match first; the text between matches is plain text.
const INLINE = [
  { re: /\\([\\`*_{}[\]()#+\-.!~|<>])/y, make: (m, parent) => parent.appendChild(document.createTextNode(m[1])) },
  { re: /(`+)([\s\S]*?[^`])\1(?!`)/y, make: (m, parent) => el("code", parent, m[2].trim() || m[2]) },
  { re: /\*\*(?=\S)([\s\S]*?\S)\*\*/y, make: (m, parent) => inline(m[1], el("strong", parent)) },
  { re: /__(?=\S)([\s\S]*?\S)__(?!\w)/y, make: (m, parent) => inline(m[1], el("strong", parent)) },
  { re: /~~(?=\S)([\s\S]*?\S)~~/y, make: (m, parent) => inline(m[1], el("del", parent)) },
  { re: /\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)/y, make: (m, parent) => inline(m[1], el("em", parent)) },
  { re: /_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/y, make: (m, parent) => inline(m[1], el("em", parent)), wordStart: true },
  { re: /!?\[([^\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)/y, make: link },
  { re: /<((?:https?:\/\/|mailto:)[^>\s]+)>/y, make: (m, parent) => anchor(m[1], parent, m[1]) },
  { re: /https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"]/y, make: (m, parent) => anchor(m[0], parent, m[0]), wordStart: true },
];
const SPECIAL = /[\\`*_~![<h]/g;

function link(m, parent) {
  if (!SAFE_URL.test(m[2])) {
    parent.appendChild(document.createTextNode(m[0])); // javascript:, data: and relative targets stay text
    return;
  }
  inline(m[1] || m[2], anchor(m[2], parent));
}

/** A link that opens apart from the page; `text` (an address shown as itself) is not parsed again. */
function anchor(href, parent, text) {
  const a = el("a", parent, text);
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  return a;
}

function inline(text, parent) {
  let plainFrom = 0;
  SPECIAL.lastIndex = 0;
  let s;
  while ((s = SPECIAL.exec(text))) {
    const at = s.index;
    let matched = null;
    for (const rule of INLINE) {
      if (rule.wordStart && at > 0 && /\w/.test(text[at - 1])) continue;
      rule.re.lastIndex = at;
      const m = rule.re.exec(text);
      if (m) {
        matched = { m, rule };
        break;
      }
    }
    if (!matched) continue;
    if (at > plainFrom) parent.appendChild(document.createTextNode(text.slice(plainFrom, at)));
    matched.rule.make(matched.m, parent);
    plainFrom = at + matched.m[0].length;
    SPECIAL.lastIndex = plainFrom;
  }
  if (plainFrom < text.length) parent.appendChild(document.createTextNode(text.slice(plainFrom)));
}
