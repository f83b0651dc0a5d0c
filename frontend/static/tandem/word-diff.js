// A word-level diff of two texts, for showing what an annotator changed in a correction.
// Returns [{type: "same" | "del" | "ins", text}]; the caller renders it (with textContent).
(() => {
  "use strict";
  if (window.tandemWordDiff) return;

  // Words (letters, digits and their accents), runs of white space, and any other single character.
  function tokens(text) {
    return text.match(/[\p{L}\p{N}\p{M}_]+|\s+|[^]/gu) || [];
  }

  // Word-level diff: the longest common subsequence of tokens between the common head and tail.
  function diffTokens(a, b) {
    let head = 0;
    while (head < a.length && head < b.length && a[head] === b[head]) head += 1;
    let tail = 0;
    while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail += 1;
    const x = a.slice(head, a.length - tail);
    const y = b.slice(head, b.length - tail);
    const ops = [];
    const push = (type, text) => {
      const last = ops[ops.length - 1];
      if (last && last.type === type) last.text += text; else if (text) ops.push({ type, text });
    };
    push("same", a.slice(0, head).join(""));
    if (x.length * y.length > 4_000_000) { // too long to compare word by word in the page
      push("del", x.join(""));
      push("ins", y.join(""));
    } else {
      const w = y.length + 1;
      const lcs = new Uint32Array((x.length + 1) * w);
      for (let i = x.length - 1; i >= 0; i -= 1) {
        for (let j = y.length - 1; j >= 0; j -= 1) {
          lcs[i * w + j] = x[i] === y[j] ? lcs[(i + 1) * w + j + 1] + 1 : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
        }
      }
      let i = 0;
      let j = 0;
      while (i < x.length || j < y.length) {
        if (i < x.length && j < y.length && x[i] === y[j]) { push("same", x[i]); i += 1; j += 1; }
        else if (i < x.length && (j === y.length || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1])) { push("del", x[i]); i += 1; }
        else { push("ins", y[j]); j += 1; }
      }
    }
    push("same", a.slice(a.length - tail).join(""));
    return ops;
  }

  window.tandemWordDiff = { diff: (a, b) => diffTokens(tokens(a), tokens(b)) };
})();
